"""Candidate retrieval stage: FAISS top-K ads for each event's query vector."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from adbid import _listscan
from adbid.world.campaigns import CampaignTable
from adbid.world.creatives import BANNER, VIDEO

if TYPE_CHECKING:
    from adbid.stages.batch import EventBatch
    from adbid.world.artifacts import World


class Retriever:
    """Top-K inner-product search over the world's ad index.

    FAISS's OpenMP thread count is set explicitly, because many threads on small
    batches are slower than one. It is a per-thread setting (an OpenMP ICV): a
    thread that never set it gets one OpenMP thread per core, and those spin between
    searches. So every search sets it in the thread it runs on (about 0.1 us).
    """

    def __init__(self, index: faiss.Index, top_k: int, threads: int) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.index = index
        self.top_k = min(top_k, index.ntotal) if index.ntotal else top_k
        self.threads = threads
        faiss.omp_set_num_threads(threads)
        # Exact search of a few queries (the events searched deeper) through BLAS too:
        # FAISS's own loop, its default under 20 queries, took 30 us a query here
        # against 23 (16 queries of 3,000 ads, top 128).
        faiss.cvar.distance_compute_blas_threshold = 1
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = max(64, 2 * self.top_k)
        # IVF: the lists to probe as the world's builder chose them (for a recall), or a
        # 32nd of them when it chose none (FAISS's default of 1).
        if isinstance(index, faiss.IndexIVF) and index.nprobe <= 1:
            index.nprobe = max(1, index.nlist // 32)
        # IVF-Flat (inner product) is searched a batch at a time, list by list; BLAS on
        # one thread (its products are small, and the server's threads run retrieval).
        self.scan = ListScan(index) if ListScan.serves(index) else None
        if self.scan is not None:
            threadpool_limits(1, user_api="blas")

    def search(self, query: np.ndarray, k: int = 0) -> np.ndarray:
        """query float32[B, D] -> ad rows int64[B, K], best first; -1 where fewer than K exist.
        `k`: other than the retriever's K (an over-fetch)."""
        k = min(k, self.index.ntotal) if k and self.index.ntotal else (k or self.top_k)
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.index.d:
            raise ValueError(f"query shape {query.shape}, index dimension {self.index.d}")
        if len(query) == 0:
            return np.empty((0, k), dtype=np.int64)
        faiss.omp_set_num_threads(self.threads)
        if self.scan is not None:
            return self.scan.search(query, k)
        _, ads = self.index.search(query, k)
        return ads

    def search_within(self, query: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """The top K of one query among `allowed` ad rows only (int64[K], -1 padded): for
        an event that may show few ads (a private auction's deals), which the plain top K
        over the whole catalogue would seldom reach."""
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        faiss.omp_set_num_threads(self.threads)
        _, ads = self.index.search(query, self.top_k,
                                   params=faiss.SearchParameters(sel=selector))
        return ads[0]


class ListScan:
    """An inverted-list index (IVF-Flat, inner product) searched a batch at a time, list
    by list (ext/listscan.pyx): the candidates and results of FAISS's own IVF search at
    the same nprobe, ties aside, with each probed list read once a batch instead of once
    a query. Holds a copy of the lists' vectors, in list order: in blocks of 8 for the
    AVX2 kernel where the CPU has it (`blocked`, None: then), else as rows for BLAS."""

    def __init__(self, index: faiss.IndexIVFFlat, blocked: bool | None = None) -> None:
        lists, d = index.invlists, index.d
        sizes = np.array([lists.list_size(i) for i in range(index.nlist)], dtype=np.int64)
        self.list_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.ids = np.empty(int(sizes.sum()), dtype=np.int64)
        self.vectors = np.empty((len(self.ids), d), dtype=np.float32)
        for i in np.flatnonzero(sizes).tolist():
            at, n = slice(self.list_start[i], self.list_start[i + 1]), int(sizes[i])
            self.ids[at] = faiss.rev_swig_ptr(lists.get_ids(i), n)
            self.vectors[at] = faiss.rev_swig_ptr(lists.get_codes(i), n * d * 4) \
                .view(np.float32).reshape(n, d)
        self.index = index
        self.blocks: np.ndarray | None = None
        self.block_start: np.ndarray | None = None
        if _listscan.block_kernel_usable() if blocked is None else blocked:
            self.blocks, self.block_start = _listscan.to_blocks(self.vectors, self.list_start)
            self.vectors = self.vectors[:0]  # the blocks alone are read

    @staticmethod
    def serves(index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIVFFlat) \
            and index.metric_type == faiss.METRIC_INNER_PRODUCT

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """query float32[B, D] (C-contiguous) -> ad rows int64[B, k], best first."""
        index = self.index
        _, probes = index.quantizer.search(query, min(index.nprobe, index.nlist))
        return _listscan.search(query, probes, self.vectors, self.list_start, self.ids, k,
                                self.blocks, self.block_start)[1]


def site_allow_keys(campaigns: CampaignTable) -> np.ndarray:
    """The (campaign, site) pairs of the campaigns' site allow lists, one sorted int64 key
    each (campaign << 32 | site), for `admissible`."""
    ptr, ids = campaigns.site_allow_ptr, campaigns.site_allow_ids
    owner = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
    return np.sort(owner << 32 | ids.astype(np.int64))


def admissible(cand: np.ndarray, ad_campaign: np.ndarray, active: np.ndarray,
               campaigns: CampaignTable, batch: EventBatch, rows: np.ndarray | None = None,
               allowed: np.ndarray | None = None) -> np.ndarray:
    """bool[B, K]: the candidate's campaign is active, its country, device and slot-size
    targeting admit the event (the decision loop's test: the event's bit in 0..63 set in
    the campaign's mask) and its site allow list, if it has one, holds the event's site.
    `rows`: the batch's events that `cand` holds (all, in order, when None); `allowed`:
    site_allow_keys(campaigns), when the caller keeps it."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    c = ad_campaign[np.maximum(cand, 0)]
    ok = (cand >= 0) & (active[c] != 0)
    for mask, bit in ((campaigns.country_mask, batch.country_bit),
                      (campaigns.device_mask, batch.device_bit),
                      (campaigns.size_mask, batch.size_bit)):
        b = pick(bit)[:, None]
        inside = (b >= 0) & (b < 64)
        ok &= inside & ((mask[c] >> np.where(inside, b, 0).astype(np.uint64)) & 1).astype(bool)
    ptr = campaigns.site_allow_ptr
    listed = ptr[c + 1] > ptr[c]
    if listed.any():
        if allowed is None:
            allowed = site_allow_keys(campaigns)
        assert batch.site_id is not None  # resolved before retrieval
        key = c.astype(np.int64) << 32 | pick(batch.site_id).astype(np.int64)[:, None]
        at = np.minimum(np.searchsorted(allowed, key), len(allowed) - 1)
        ok &= ~listed | (allowed[at] == key)
    return ok


def showable(world: World, batch: EventBatch, cand_ad: np.ndarray) -> np.ndarray:
    """Candidates an event cannot show (a video ad for a banner slot, a video that does
    not fit the placement) become -1, as if retrieval had not found them."""
    if not world.video and batch.deal_campaigns is None and batch.blocked_attrs is None:
        return cand_ad
    formats = batch.formats if batch.formats is not None else \
        np.full(len(batch), BANNER, np.uint8)
    found = cand_ad >= 0
    fmt = np.where(found, world.ad_format[np.maximum(cand_ad, 0)], 0)
    keep = found & ((fmt & formats[:, None]) != 0)
    if batch.video_ads is not None:
        for i, allowed in enumerate(batch.video_ads):
            if allowed is not None:
                video = fmt[i] == VIDEO
                keep[i, video] &= np.isin(cand_ad[i, video], list(allowed))
    if batch.blocked_attrs is not None and batch.blocked_attrs.any():
        attrs = world.ad_attrs[np.maximum(cand_ad, 0)]
        keep &= (attrs & batch.blocked_attrs[:, None]) == 0
    if batch.deal_campaigns is not None:
        rows = world.ad_campaign[np.maximum(cand_ad, 0)]
        for i, campaigns in enumerate(batch.deal_campaigns):
            if campaigns is not None:
                keep[i] &= np.isin(rows[i], list(campaigns))
    return np.where(keep, cand_ad, -1)

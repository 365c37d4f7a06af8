"""Candidate retrieval stage: FAISS top-K ads for each event's query vector."""

from __future__ import annotations

import faiss
import numpy as np


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
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = max(64, 2 * self.top_k)
        if isinstance(index, faiss.IndexIVF):  # a 32nd of the lists (benchmarks/scale.py)
            index.nprobe = max(1, index.nlist // 32)

    def search(self, query: np.ndarray) -> np.ndarray:
        """query float32[B, D] -> ad rows int64[B, K], best first; -1 where fewer than K exist."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.index.d:
            raise ValueError(f"query shape {query.shape}, index dimension {self.index.d}")
        if len(query) == 0:
            return np.empty((0, self.top_k), dtype=np.int64)
        faiss.omp_set_num_threads(self.threads)
        _, ads = self.index.search(query, self.top_k)
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

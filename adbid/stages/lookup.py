"""Lookup stage: user ids -> stored embeddings, context text -> a context embedding.

A missing or unusable user id (empty, all zeros as in a limit-ad-tracking
device id) maps to a zero vector: the event is bid on by context alone. Unknown
users are never merged into one key; they simply have no embedding.
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from adbid._idtable import IdTable, user_keys
from adbid.world import targeting
from adbid.world.artifacts import World, WorldError
from adbid.world.campaigns import CampaignTable

if TYPE_CHECKING:  # no protobuf at run time: the Triton peer's venv has another protobuf
    from adbid.stages.batch import EventBatch

_WORD = re.compile(r"[a-z0-9]+")


def usable_user_id(user_id: str) -> bool:
    """False for "", "0" and zeroed device ids like "00000000-0000-0000-0000-000000000000"."""
    return bool(user_id.strip("0-"))


def resolve(batch: EventBatch, campaigns: CampaignTable) -> None:
    """Fill the batch's id columns: user keys, site ids, publisher blocks as ids and masks.

    User keys hash the id alone (adbid._idtable.user_keys), so that processes and hosts
    that share frequency counts, and a restarted process, agree on them.
    """
    n = len(batch)
    users = batch.user_id
    # map() over builtins keeps these per-event loops in C.
    batch.user_known = np.fromiter(map(bool, map(str.strip, users, repeat("0-"))),
                                   dtype=np.uint8, count=n)
    batch.user_key = user_keys(users)
    batch.site_id = np.fromiter(map(campaigns.site_ids.get, batch.site_domain, repeat(-1)),
                                dtype=np.int32, count=n)
    batch.blocked_category_mask = targeting.category_masks(batch.blocked_categories,
                                                           batch.blocked_categories_count)
    batch.blocked_subcategory_ptr, batch.blocked_subcategory_ids = targeting.subcategory_ids(
        batch.blocked_categories, batch.blocked_categories_count, campaigns.subcategory_id)
    # Advertiser domains to ids, kept flat: unknown domains (no campaign's advertiser)
    # drop out, and each event's count shrinks with them.
    counts = batch.blocked_advertisers_count
    ids = np.fromiter(map(campaigns.advertiser_ids.get, batch.blocked_advertisers, repeat(-1)),
                      dtype=np.int32, count=len(batch.blocked_advertisers))
    if (ids < 0).any():
        known = ids >= 0
        owner = np.repeat(np.arange(n), counts)
        ids, counts = ids[known], np.bincount(owner[known], minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=ptr[1:])
    batch.blocked_adv_ptr, batch.blocked_adv_ids = ptr, ids


class UserLookup:
    """User id -> row (a compiled hash table over the world's id array, no Python object
    per user); embeddings, where unknown users get zeros."""

    def __init__(self, world: World) -> None:
        n, d = world.user_embeddings.shape
        self._ids = IdTable(world.user_ids)  # leaves out ids that mean "no user"
        if self._ids.duplicates:
            raise WorldError(f"{world.path}: user_ids has {self._ids.duplicates} duplicates")
        self._unknown = n
        # The world's array itself, not a copy with a zero row appended (a 100k x 64 store
        # took 41 ms to copy, on every load and reload): unknown rows are zeroed per batch.
        self._table = world.user_embeddings if n else np.zeros((1, d), dtype=np.float32)

    def rows(self, user_ids: list[str]) -> np.ndarray:
        """int64[B] embedding rows; unknown users get the zero row."""
        return self._ids.rows_of(user_ids, self._unknown)

    def known(self, rows: np.ndarray) -> np.ndarray:
        """bool[B]: which rows are real users."""
        return rows != self._unknown

    def embeddings(self, rows: np.ndarray) -> np.ndarray:
        """float32[B, D] (from a float32 or float16 store); zeros for unknown users."""
        unknown = rows == self._unknown
        if not unknown.any():
            return self._table[rows].astype(np.float32, copy=False)
        out = self._table.take(np.where(unknown, 0, rows), axis=0).astype(np.float32, copy=False)
        out[unknown] = 0.0
        return out


class ContextEncoder:
    """Context text -> mean of the topic embeddings of its known words (zeros if none).

    Pages repeat, so vectors are cached by text in a fixed-size table that is
    cleared when full (between batches, never within one).
    """

    def __init__(self, world: World, capacity: int = 1 << 16) -> None:
        self._words = world.context_words
        self._topics = world.topic_embeddings
        self._table = np.zeros((capacity, world.dim), dtype=np.float32)
        self._row: dict[str, int] = {}

    def _add(self, text: str) -> int:
        row = len(self._row)
        topics = [t for w in _WORD.findall(text.lower()) if (t := self._words.get(w)) is not None]
        if topics:
            v = self._topics[topics].mean(axis=0)
            norm = float(np.linalg.norm(v))
            self._table[row] = v / norm if norm > 0 else 0.0
        else:
            self._table[row] = 0.0
        self._row[text] = row
        return row

    def embeddings(self, texts: list[str]) -> np.ndarray:
        """float32[B, D]."""
        if len(self._row) + len(texts) > len(self._table):
            self._row.clear()
        seen = list(map(self._row.get, texts))
        if None in seen:  # texts not seen since the last clear
            get, add = self._row.get, self._add
            rows = [r if r is not None else r2 if (r2 := get(t)) is not None else add(t)
                    for r, t in zip(seen, texts)]
            return self._table[rows]
        return self._table[seen]  # type: ignore[index]  # no None left in it

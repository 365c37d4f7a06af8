"""The pipeline's input: one batch of events as columns (numpy arrays and id lists).

The edges build it (adbid.edge.decode); the lookup stage fills in what the world
resolves; every later stage reads it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adbid.world.creatives import BANNER


@dataclass
class EventBatch:
    """One batch as columns; every array has one entry per event, in request order."""

    request_id: list[str]
    user_id: list[str]
    context_text: list[str]
    floor_micros: np.ndarray  # int64[B], CPM micros
    first_price: np.ndarray  # uint8[B], 1 = first-price auction
    device_type: np.ndarray  # int64[B], adbid.v1.DeviceType value (0 where invalid)
    country_bit: np.ndarray  # int32[B], targeting bit index
    device_bit: np.ndarray  # int32[B]
    size_bit: np.ndarray  # int32[B]
    is_test: np.ndarray  # uint8[B]
    site_domain: list[str]
    # Publisher block lists, flat as on the columnar wire: event i's entries are the next
    # *_count[i] of the flat sequence.
    blocked_advertisers: Sequence[str]  # OpenRTB badv: advertiser domains
    blocked_advertisers_count: np.ndarray  # int64[B]
    blocked_categories: Sequence[str]  # OpenRTB bcat: IAB codes
    blocked_categories_count: np.ndarray  # int64[B]
    errors: dict[int, str] = field(default_factory=dict)  # event position -> problem
    # What each event may show, as adbid.world.creatives format bits (None: banners only),
    # and for video, the video ads that fit it (None: any).
    formats: np.ndarray | None = None  # uint8[B]
    video_ads: list[frozenset[int] | None] | None = None
    # The campaign rows each event is limited to (a private auction's deals; None: any).
    deal_campaigns: list[frozenset[int] | None] | None = None
    # How long each event's reservation must at least be held, ms (0: the server's TTL).
    hold_ms: np.ndarray | None = None  # int64[B]
    # Creative attributes each event's publisher blocks (bits, adbid.world.creatives).
    blocked_attrs: np.ndarray | None = None  # uint64[B]
    # Filled by the lookup stage (adbid.stages.lookup.resolve), from the world's vocabularies:
    user_key: np.ndarray | None = None  # uint64[B], hash of the user id
    user_known: np.ndarray | None = None  # uint8[B], 1 = usable user id
    site_id: np.ndarray | None = None  # int32[B], -1 = site in no campaign's list
    blocked_category_mask: np.ndarray | None = None  # uint64[B]
    blocked_adv_ptr: np.ndarray | None = None  # int32[B + 1], CSR over blocked_adv_ids
    blocked_adv_ids: np.ndarray | None = None  # int32[...]

    def __len__(self) -> int:
        return len(self.request_id)

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """One batch of several decoded (not yet resolved) ones, in order; errors keep
        pointing at their events."""
        if len(batches) == 1:
            return batches[0]
        errors: dict[int, str] = {}
        offset = 0
        for b in batches:
            errors.update({offset + i: message for i, message in b.errors.items()})
            offset += len(b)

        def lists(name: str) -> list:
            return list(itertools.chain.from_iterable(getattr(b, name) for b in batches))

        def arrays(name: str) -> np.ndarray:
            return np.concatenate([getattr(b, name) for b in batches])

        return EventBatch(
            request_id=lists("request_id"), user_id=lists("user_id"),
            context_text=lists("context_text"), floor_micros=arrays("floor_micros"),
            first_price=arrays("first_price"), device_type=arrays("device_type"),
            country_bit=arrays("country_bit"), device_bit=arrays("device_bit"),
            size_bit=arrays("size_bit"), is_test=arrays("is_test"),
            site_domain=lists("site_domain"),
            blocked_advertisers=lists("blocked_advertisers"),
            blocked_advertisers_count=arrays("blocked_advertisers_count"),
            blocked_categories=lists("blocked_categories"),
            blocked_categories_count=arrays("blocked_categories_count"),
            errors=errors, **_formats(batches))


def _formats(batches: Sequence[EventBatch]) -> dict:
    """The merged formats and video fits, when any part has them."""
    if all(b.formats is None and b.video_ads is None and b.deal_campaigns is None
           and b.hold_ms is None and b.blocked_attrs is None for b in batches):
        return {}
    return {"formats": np.concatenate([b.formats if b.formats is not None
                                       else np.full(len(b), BANNER, np.uint8) for b in batches]),
            "video_ads": list(itertools.chain.from_iterable(
                b.video_ads if b.video_ads is not None else [None] * len(b) for b in batches)),
            "deal_campaigns": list(itertools.chain.from_iterable(
                b.deal_campaigns if b.deal_campaigns is not None else [None] * len(b)
                for b in batches)),
            "hold_ms": np.concatenate([b.hold_ms if b.hold_ms is not None
                                       else np.zeros(len(b), np.int64) for b in batches]),
            "blocked_attrs": np.concatenate([b.blocked_attrs if b.blocked_attrs is not None
                                             else np.zeros(len(b), np.uint64)
                                             for b in batches])}

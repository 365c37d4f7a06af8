"""The pipeline's input: one batch of events as columns (numpy arrays and id lists).

The edges build it (adbid.edge.decode); the lookup stage fills in what the world
resolves; every later stage reads it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adbid._fingerprint import fingerprints
from adbid._idtable import user_keys
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
    # uint8[B], 1 = the event named no auction type (None: every event named one); the
    # pipeline treats those as the server's --unspecified-auction says.
    unspecified_auction: np.ndarray | None = None
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
    blocked_subcategory_ptr: np.ndarray | None = None  # int32[B + 1], CSR over the ids
    blocked_subcategory_ids: np.ndarray | None = None  # int32[...], CampaignTable.subcategory_id

    def __len__(self) -> int:
        return len(self.request_id)

    def fingerprints(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """A hash of each of these events' content (everything but its request id; block
        lists as sets), uint64: a retried event must match the one that bid. Stable within
        the process only (ext/fingerprint.pyx). The user's key is the lookup stage's
        (adbid._idtable.user_keys), computed here when it has not run."""
        keys = self.user_key if self.user_key is not None else user_keys(self.user_id)
        return fingerprints(np.asarray(positions, dtype=np.int64), keys,
                            self.context_text, self.site_domain,
                            self.first_price, self.is_test, self.country_bit, self.size_bit,
                            self.device_type, self.floor_micros, self.blocked_advertisers,
                            self.blocked_advertisers_count, self.blocked_categories,
                            self.blocked_categories_count)

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """One batch of several decoded (not yet resolved) ones, in order; errors keep
        pointing at their events."""
        if len(batches) == 1:
            return batches[0]

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
            errors=merged_errors(batches), unspecified_auction=merged_optional(
                batches, "unspecified_auction", np.uint8), **merged_limits(batches))


# What limits the ads an event may show, with each field's value for an event that says
# nothing and its array type (None: a list). Edges that fill them (OpenRTB) hand them in as
# lists or arrays; merged batches carry them only when some part does.
LIMITS = (("formats", BANNER, np.uint8), ("video_ads", None, None),
          ("deal_campaigns", None, None), ("hold_ms", 0, np.int64),
          ("blocked_attrs", 0, np.uint64))


def merged_errors(parts: Sequence) -> dict[int, str]:
    """The parts' errors, each moved to its event's position in the merged batch."""
    errors: dict[int, str] = {}
    offset = 0
    for part in parts:
        errors.update({offset + i: message for i, message in part.errors.items()})
        offset += len(part)
    return errors


def merged_optional(parts: Sequence, name: str, dtype) -> np.ndarray | None:
    """An optional array column merged (zeros for parts without it); None when no part has it."""
    if all(getattr(part, name) is None for part in parts):
        return None
    return np.concatenate([np.zeros(len(part), dtype) if (v := getattr(part, name)) is None
                           else np.asarray(v, dtype) for part in parts])


def merged_limits(parts: Sequence) -> dict:
    """The parts' LIMITS fields, merged (defaults for parts without them); {} when no part
    has any."""
    if all(getattr(part, name) is None for part in parts for name, _, _ in LIMITS):
        return {}
    out: dict = {}
    for name, default, dtype in LIMITS:
        values = [v if (v := getattr(part, name)) is not None else [default] * len(part)
                  for part in parts]
        out[name] = list(itertools.chain.from_iterable(values)) if dtype is None else \
            np.concatenate([np.asarray(v, dtype=dtype) for v in values])
    return out

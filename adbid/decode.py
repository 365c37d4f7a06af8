"""Decode stage: a protobuf batch of AdEvent -> columns (numpy arrays and id lists).

An invalid event never fails its batch: it is marked in `errors` with the
field and the problem, and later decided as NO_BID_REASON_INVALID_EVENT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adbid import targeting
from adbid.v1 import bidder_pb2 as pb

MAX_REQUEST_ID_CHARS = 128
MAX_USER_ID_CHARS = 256
MAX_CONTEXT_CHARS = 1024
MAX_DOMAIN_CHARS = 253
N_DEVICE_TYPES = len(pb.DeviceType.values())
N_AUCTION_TYPES = len(pb.AuctionType.values())


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
    blocked_advertisers: list  # per event: the publisher's badv (repeated string)
    blocked_categories: list  # per event: the publisher's bcat (repeated string)
    errors: dict[int, str] = field(default_factory=dict)  # event position -> problem
    # Filled by the lookup stage (adbid.lookup.resolve), from the world's vocabularies:
    user_key: np.ndarray | None = None  # uint64[B], hash of the user id
    user_known: np.ndarray | None = None  # uint8[B], 1 = usable user id
    site_id: np.ndarray | None = None  # int32[B], -1 = site in no campaign's list
    blocked_category_mask: np.ndarray | None = None  # uint64[B]
    blocked_adv_ptr: np.ndarray | None = None  # int32[B + 1], CSR over blocked_adv_ids
    blocked_adv_ids: np.ndarray | None = None  # int32[...]

    def __len__(self) -> int:
        return len(self.request_id)


def _too_long(values: list[str], limit: int) -> list[int]:
    if not values or max(map(len, values)) <= limit:
        return []
    return [i for i, v in enumerate(values) if len(v) > limit]


def decode(events: Sequence[pb.AdEvent], errors: dict[int, str] | None = None) -> EventBatch:
    """Columns of a batch of events; validation problems land in EventBatch.errors.

    `errors`: problems already found (e.g. by parse_request), kept first. One pass over
    the messages reads every field (each pass over a repeated message field costs about
    0.2 us an event), then the rows are transposed into columns.
    """
    rows = [(e.request_id, e.user_id, e.context_text, e.floor_cpm_micros, e.device_type,
             e.auction_type, e.slot_width_px, e.slot_height_px, e.country, e.test,
             e.site_domain, e.blocked_advertiser_domains, e.blocked_categories) for e in events]
    (rid, user, context, floor, device, auction, width, height, country, test, site, badv,
     bcat) = zip(*rows) if rows else ((),) * 13
    floor = np.array(floor, dtype=np.int64)
    device = np.array(device, dtype=np.int64)
    auction = np.array(auction, dtype=np.int64)
    width = np.array(width, dtype=np.int64)
    height = np.array(height, dtype=np.int64)
    batch = EventBatch(
        request_id=list(rid),
        user_id=list(user),
        context_text=list(context),
        floor_micros=floor,
        first_price=(auction == pb.AUCTION_TYPE_FIRST_PRICE).astype(np.uint8),
        device_type=device,
        country_bit=targeting.country_bits(country),
        device_bit=targeting.device_bits(device),
        size_bit=targeting.size_bits(width, height),
        is_test=np.array(test, dtype=np.uint8),
        site_domain=list(site),
        blocked_advertisers=list(badv),
        blocked_categories=list(bcat),
        errors=dict(errors) if errors else {},
    )
    _validate(batch, auction, width, height)
    return batch


def _validate(b: EventBatch, auction: np.ndarray, width: np.ndarray, height: np.ndarray) -> None:
    """Fill b.errors. Cheap checks run on whole columns; per-event work only on failures."""
    err = b.errors

    def mark(positions, message: str) -> None:
        for i in positions:
            err.setdefault(int(i), message)

    rid = b.request_id
    if len(set(rid)) != len(rid) or "" in rid:
        seen: set[str] = set()
        for i, r in enumerate(rid):
            if not r:
                mark([i], "request_id: empty")
            elif r in seen:
                mark([i], "request_id: duplicate in batch")
            seen.add(r)
    mark(_too_long(rid, MAX_REQUEST_ID_CHARS), f"request_id: longer than {MAX_REQUEST_ID_CHARS}")
    mark(_too_long(b.user_id, MAX_USER_ID_CHARS), f"user_id: longer than {MAX_USER_ID_CHARS}")
    mark(_too_long(b.context_text, MAX_CONTEXT_CHARS),
         f"context_text: longer than {MAX_CONTEXT_CHARS} characters")
    mark(_too_long(b.site_domain, MAX_DOMAIN_CHARS), f"site_domain: longer than {MAX_DOMAIN_CHARS}")
    mark(np.flatnonzero(b.floor_micros < 0), "floor_cpm_micros: negative")
    bad_device = (b.device_type < 0) | (b.device_type >= N_DEVICE_TYPES)
    mark(np.flatnonzero(bad_device), "device_type: unknown enum value")
    mark(np.flatnonzero((auction < 0) | (auction >= N_AUCTION_TYPES)),
         "auction_type: unknown enum value")
    bad_size = ((width < 0) | (width > targeting.MAX_SLOT_PX)
                | (height < 0) | (height > targeting.MAX_SLOT_PX))
    mark(np.flatnonzero(bad_size), f"slot size: width and height must be 0..{targeting.MAX_SLOT_PX}")
    if bad_device.any():
        b.device_type[bad_device] = 0  # keeps the model's device gather in range


class UndecodableRequest(ValueError):
    """The bytes are not a BidRequest at all."""


def parse_request(data: bytes) -> tuple[pb.BidRequest, dict[int, str]]:
    """Raw bytes -> (BidRequest, errors by event position).

    The fast path is a plain parse. A request that fails it only because some
    strings are not UTF-8 is salvaged: those events get an error naming the
    field (and empty text), the others are decided as usual.
    """
    from google.protobuf.message import DecodeError

    req = pb.BidRequest()
    try:
        req.ParseFromString(data)
        return req, {}
    except DecodeError:
        pass
    from adbid.v1 import lenient_pb2

    loose = lenient_pb2.LenientBidRequest()
    try:
        loose.ParseFromString(data)
    except DecodeError as exc:
        raise UndecodableRequest(f"request: not an adbid.v1.BidRequest ({exc})") from None
    errors: dict[int, str] = {}

    def text(i: int, name: str, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.setdefault(i, f"{name}: not valid UTF-8")
            return ""

    req = pb.BidRequest(batch_id=loose.batch_id.decode("utf-8", "replace"),
                        deadline_ms=loose.deadline_ms)
    for i, e in enumerate(loose.events):
        req.events.add(
            request_id=text(i, "request_id", e.request_id) or f"(invalid #{i})",
            user_id=text(i, "user_id", e.user_id),
            context_text=text(i, "context_text", e.context_text),
            timestamp_ms=e.timestamp_ms, floor_cpm_micros=e.floor_cpm_micros,
            country=text(i, "country", e.country), device_type=e.device_type,
            slot_width_px=e.slot_width_px, slot_height_px=e.slot_height_px,
            site_domain=text(i, "site_domain", e.site_domain), auction_type=e.auction_type,
            test=e.test,
            blocked_advertiser_domains=[text(i, "blocked_advertiser_domains", d)
                                        for d in e.blocked_advertiser_domains],
            blocked_categories=[text(i, "blocked_categories", c) for c in e.blocked_categories])
    return req, errors

"""Decode stage: a parsed request (adbid.edge.parse) -> columns (numpy arrays and id lists).

A columnar request is read by adbid._wire straight from its bytes (a
WireRequest); anything else is parsed by protobuf (events or columns, with
invalid UTF-8 salvaged per event). An invalid event never fails its batch: it
is marked in `errors` with the field and the problem, and later decided as
NO_BID_REASON_INVALID_EVENT.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adbid.stages.batch import EventBatch, merged_errors, merged_limits
from adbid.v1 import bidder_pb2 as pb
from adbid.world import targeting

MAX_REQUEST_ID_CHARS = 128
MAX_USER_ID_CHARS = 256
MAX_CONTEXT_CHARS = 1024
MAX_DOMAIN_CHARS = 253
N_DEVICE_TYPES = len(pb.DeviceType.values())
N_AUCTION_TYPES = len(pb.AuctionType.values())


def _too_long(values: list[str], limit: int, longest: int | None = None) -> list[int]:
    """Positions of values over `limit` characters. `longest`: the longest value in UTF-8
    bytes, when the reader knows it (no value has more characters than bytes)."""
    if not values or (longest if longest is not None else max(map(len, values))) <= limit:
        return []
    return [i for i, v in enumerate(values) if len(v) > limit]


class BadRequest(ValueError):
    """The request as a whole is unacceptable (INVALID_ARGUMENT), e.g. ragged columns."""


@dataclass
class WireRequest:
    """A columnar BidRequest as adbid._wire read it from its bytes, without protobuf objects.
    `columns`: the filled EventColumns columns by name (lists of str, int64 arrays)."""

    batch_id: str
    deadline_ms: int
    columns: dict
    longest: dict  # string column -> its longest entry in UTF-8 bytes


Request = pb.BidRequest | WireRequest


def is_columnar(request: Request) -> bool:
    return isinstance(request, WireRequest) or request.HasField("columns")


def batch_size(request: Request) -> int:
    """Events in a request, in whichever form it came."""
    if isinstance(request, WireRequest):
        return len(request.columns["request_id"])
    if request.events and request.HasField("columns"):
        raise BadRequest("request: send events or columns, not both")
    return len(request.columns.request_id) if request.HasField("columns") else len(request.events)


def request_ids(request: Request) -> list[str]:
    if isinstance(request, WireRequest):
        return request.columns["request_id"]
    return (list(request.columns.request_id) if request.HasField("columns")
            else [e.request_id for e in request.events])


def decode_request(request: Request, errors: dict[int, str] | None = None) -> EventBatch:
    """The decode stage: columns of a request in either form."""
    if isinstance(request, WireRequest):
        return decode_columns(request.columns, errors, request.longest)
    if request.HasField("columns"):
        return decode_columns(request.columns, errors)
    return decode(request.events, errors)


def decode(events: Sequence[pb.AdEvent], errors: dict[int, str] | None = None) -> EventBatch:
    """Columns of a batch of event messages; validation problems land in EventBatch.errors.

    `errors`: problems already found (e.g. by parse_request), kept first. One pass over
    the messages reads every field (each pass over a repeated message field costs about
    0.2 us an event), then the rows are transposed into columns.
    """
    rows = [(e.request_id, e.user_id, e.context_text, e.floor_cpm_micros, e.device_type,
             e.auction_type, e.slot_width_px, e.slot_height_px, e.country, e.test,
             e.site_domain, e.blocked_advertiser_domains, e.blocked_categories) for e in events]
    (rid, user, context, floor, device, auction, width, height, country, test, site, badv,
     bcat) = zip(*rows) if rows else ((),) * 13
    n = len(rows)

    def flat(lists) -> tuple[list[str], np.ndarray]:
        return (list(itertools.chain.from_iterable(lists)),
                np.fromiter(map(len, lists), dtype=np.int64, count=n))

    return make_batch(list(rid), list(user), list(context), np.array(floor, dtype=np.int64),
                  np.array(device, dtype=np.int64), np.array(auction, dtype=np.int64),
                  np.array(width, dtype=np.int64), np.array(height, dtype=np.int64),
                  country, np.array(test, dtype=np.uint8), list(site), *flat(badv), *flat(bcat),
                  errors)


def decode_columns(cols: pb.EventColumns | dict, errors: dict[int, str] | None = None,
                   longest: dict | None = None) -> EventBatch:
    """Columns of a columnar request (an EventColumns, or WireRequest.columns and its
    `longest`): one call per column, no per-event Python. Raises BadRequest for a column
    whose length does not match the batch (which event it belongs to would be a guess)."""
    get = cols.get if isinstance(cols, dict) else lambda name, empty: getattr(cols, name)
    rid = list(get("request_id", ()))
    n = len(rid)

    def column(name: str):
        values = get(name, ())
        if len(values) and len(values) != n:
            raise BadRequest(f"columns.{name}: {len(values)} entries for {n} events "
                             "(a column is empty or has one entry per event)")
        return values

    def strings(name: str) -> list[str]:
        values = column(name)
        if not len(values):
            return [""] * n
        return values if isinstance(values, list) else list(values)  # the reader's lists as-is

    def numbers(name: str, dtype) -> np.ndarray:
        values = column(name)
        return np.asarray(values, dtype=dtype) if len(values) else np.zeros(n, dtype=dtype)

    return make_batch(rid, strings("user_id"), strings("context_text"),
                  numbers("floor_cpm_micros", np.int64), numbers("device_type", np.int64),
                  numbers("auction_type", np.int64), numbers("slot_width_px", np.int64),
                  numbers("slot_height_px", np.int64), strings("country"),
                  numbers("test", np.uint8), strings("site_domain"),
                  *_flat(get, "blocked_advertiser_domains", n),
                  *_flat(get, "blocked_categories", n), errors, longest)


def _flat(get, name: str, n: int) -> tuple[Sequence[str], np.ndarray]:
    """A flat list column and its count column, checked against each other (`get(name,
    empty)` reads a column)."""
    flat, counts = get(name, ()), get(f"{name}_count", ())
    if not len(counts):
        if len(flat):
            raise BadRequest(f"columns.{name}: {len(flat)} entries but no {name}_count column")
        return (), np.zeros(n, dtype=np.int64)
    if len(counts) != n:
        raise BadRequest(f"columns.{name}_count: {len(counts)} entries for {n} events")
    counts = np.asarray(counts, dtype=np.int64)
    if (total := int(counts.sum())) != len(flat):
        raise BadRequest(f"columns.{name}_count: counts add up to {total}, "
                         f"but columns.{name} has {len(flat)} entries")
    return flat, counts


@dataclass
class EventRows:
    """Events as plain Python columns, not yet arrays: what an edge that takes one small
    request at a time (OpenRTB) hands the batcher, so that the arrays are built and
    checked once per gathered batch instead of once per request."""

    request_id: list[str]
    user_id: list[str]
    context_text: list[str]
    floor: list[int]
    device: list[int]
    auction: list[int]
    width: list[int]
    height: list[int]
    country: list[str]
    test: list[int]
    site: list[str]
    badv: list[list[str]]  # per event
    bcat: list[list[str]]  # per event
    formats: list[int] | None = None  # adbid.world.creatives format bits; None = banners
    video_ads: list[frozenset[int] | None] | None = None  # the video ads that fit
    deal_campaigns: list[frozenset[int] | None] | None = None  # private auctions' campaigns
    hold_ms: list[int] | None = None  # reservation held at least this long (imp.exp)
    blocked_attrs: list[int] | None = None  # creative attributes blocked (bit masks)
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def is_test(self) -> np.ndarray:
        return np.array(self.test, dtype=np.uint8)

    @staticmethod
    def concat(parts: Sequence[EventRows]) -> EventBatch:
        """One EventBatch of these rows, in order (the batcher's merge)."""
        def chain(name: str) -> list:
            return list(itertools.chain.from_iterable(getattr(r, name) for r in parts))

        badv, bcat = chain("badv"), chain("bcat")
        batch = make_batch(
            chain("request_id"), chain("user_id"), chain("context_text"),
            np.array(chain("floor"), np.int64), np.array(chain("device"), np.int64),
            np.array(chain("auction"), np.int64), np.array(chain("width"), np.int64),
            np.array(chain("height"), np.int64), chain("country"),
            np.array(chain("test"), np.uint8), chain("site"),
            list(itertools.chain.from_iterable(badv)),
            np.fromiter(map(len, badv), np.int64, len(badv)),
            list(itertools.chain.from_iterable(bcat)),
            np.fromiter(map(len, bcat), np.int64, len(bcat)), merged_errors(parts))
        for name, value in merged_limits(parts).items():
            setattr(batch, name, value)
        return batch


def make_batch(rid: list[str], user: list[str], context: list[str], floor: np.ndarray,
           device: np.ndarray, auction: np.ndarray, width: np.ndarray, height: np.ndarray,
           country: Sequence[str], test: np.ndarray, site: list[str], badv: Sequence[str],
           badv_count: np.ndarray, bcat: Sequence[str], bcat_count: np.ndarray,
           errors: dict[int, str] | None, longest: dict | None = None) -> EventBatch:
    batch = EventBatch(
        request_id=rid,
        user_id=user,
        context_text=context,
        floor_micros=floor,
        first_price=(auction == pb.AUCTION_TYPE_FIRST_PRICE).astype(np.uint8),
        device_type=device,
        country_bit=targeting.country_bits(country),
        device_bit=targeting.device_bits(device),
        size_bit=targeting.size_bits(width, height),
        is_test=test,
        site_domain=site,
        blocked_advertisers=badv,
        blocked_advertisers_count=badv_count,
        blocked_categories=bcat,
        blocked_categories_count=bcat_count,
        errors=dict(errors) if errors else {},
    )
    if (unspecified := auction == pb.AUCTION_TYPE_UNSPECIFIED).any():
        batch.unspecified_auction = unspecified.astype(np.uint8)
    _validate(batch, auction, width, height, longest or {})
    return batch


def _validate(b: EventBatch, auction: np.ndarray, width: np.ndarray, height: np.ndarray,
              longest: dict) -> None:
    """Fill b.errors. Cheap checks run on whole columns; per-event work only on failures.
    `longest`: string column -> longest entry in bytes, where the reader knows it."""
    err = b.errors

    def mark(positions, message: str) -> None:
        for i in positions:
            err.setdefault(int(i), message)

    def flag(bad: np.ndarray, message: str) -> None:
        if bad.any():  # the common case, all valid, costs one C call
            mark(np.flatnonzero(bad), message)

    rid = b.request_id
    if len(set(rid)) != len(rid) or "" in rid:
        seen: set[str] = set()
        for i, r in enumerate(rid):
            if not r:
                mark([i], "request_id: empty")
            elif r in seen:
                mark([i], "request_id: duplicate in batch")
            seen.add(r)
    get = longest.get
    mark(_too_long(rid, MAX_REQUEST_ID_CHARS, get("request_id")),
         f"request_id: longer than {MAX_REQUEST_ID_CHARS}")
    mark(_too_long(b.user_id, MAX_USER_ID_CHARS, get("user_id")),
         f"user_id: longer than {MAX_USER_ID_CHARS}")
    mark(_too_long(b.context_text, MAX_CONTEXT_CHARS, get("context_text")),
         f"context_text: longer than {MAX_CONTEXT_CHARS} characters")
    mark(_too_long(b.site_domain, MAX_DOMAIN_CHARS, get("site_domain")),
         f"site_domain: longer than {MAX_DOMAIN_CHARS}")
    flag(b.floor_micros < 0, "floor_cpm_micros: negative")
    bad_device = (b.device_type < 0) | (b.device_type >= N_DEVICE_TYPES)
    flag(bad_device, "device_type: unknown enum value")
    flag((auction < 0) | (auction >= N_AUCTION_TYPES), "auction_type: unknown enum value")
    flag((width < 0) | (width > targeting.MAX_SLOT_PX),
         f"slot_width_px: must be 0..{targeting.MAX_SLOT_PX} (0 = unknown)")
    flag((height < 0) | (height > targeting.MAX_SLOT_PX),
         f"slot_height_px: must be 0..{targeting.MAX_SLOT_PX} (0 = unknown)")
    if bad_device.any():
        b.device_type[bad_device] = 0  # keeps the model's device gather in range

"""Parse: a BidRequest's bytes -> the request (a WireRequest read by adbid._wire, or a
protobuf BidRequest), salvaging what it can from bytes that do not parse: events whose
only fault is invalid UTF-8, and a broken message's batch_id."""

from __future__ import annotations

import numpy as np

from adbid import _wire
from adbid.edge.decode import Request, WireRequest
from adbid.v1 import bidder_pb2 as pb


class UndecodableRequest(ValueError):
    """The bytes are not a BidRequest at all."""


def salvage_batch_id(data: bytes) -> str:
    """The batch_id (field 1) of a message that does not parse, read field by field up to
    where it breaks: BidStream's reply to it then still carries the id the client sent.
    "" when it cannot be found."""
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while pos < end and shift < 64:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise ValueError("truncated varint")

    try:
        while pos < end:
            key = varint()
            field, wire = key >> 3, key & 7
            if wire == 0:
                varint()
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length = varint()
                if field == 1 and pos + length <= end:
                    return data[pos:pos + length].decode("utf-8", "replace")[:128]
                pos += length
            else:
                return ""
    except ValueError:
        pass
    return ""


def parse_request(data: bytes) -> tuple[Request, dict[int, str]]:
    """Raw bytes -> (request, errors by event position).

    A well-formed columnar request is read by adbid._wire (a WireRequest). Anything
    else is parsed by protobuf (a BidRequest). A request that fails that only
    because some strings are not UTF-8 is salvaged: those events get an error
    naming the field (and empty text), the others are decided as usual.
    """
    from google.protobuf.message import DecodeError

    if (read := _wire.read_columns(data)) is not None:
        return WireRequest(*read), {}
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
    if loose.HasField("columns"):
        _salvage_columns(loose.columns, req.columns, text)
        return req, errors
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


def _salvage_columns(loose, cols: pb.EventColumns, text) -> None:
    """Copy a LenientEventColumns into `cols`, text through `text(event, field, raw)`."""
    cols.request_id.extend(text(i, "request_id", r) or f"(invalid #{i})"
                           for i, r in enumerate(loose.request_id))
    for name in ("user_id", "context_text", "country", "site_domain"):
        getattr(cols, name).extend(text(i, name, r) for i, r in enumerate(getattr(loose, name)))
    for name in ("timestamp_ms", "floor_cpm_micros", "device_type", "slot_width_px",
                 "slot_height_px", "auction_type", "test"):
        getattr(cols, name).extend(getattr(loose, name))
    for name in ("blocked_advertiser_domains", "blocked_categories"):
        counts = list(getattr(loose, f"{name}_count"))
        getattr(cols, f"{name}_count").extend(counts)
        # Which event owns flat entry j (ragged counts are refused later by decode_columns).
        ends = np.cumsum(counts) if counts else np.zeros(0, dtype=np.int64)
        owner = np.searchsorted(ends, np.arange(len(getattr(loose, name))), side="right")
        getattr(cols, name).extend(text(int(o), name, r)
                                   for o, r in zip(owner, getattr(loose, name)))

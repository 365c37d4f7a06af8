"""adbid._wire against protobuf: columnar requests read from bytes, answers written as bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from adbid import _wire
from adbid.client import LISTS, SCALARS
from adbid.v1 import bidder_pb2 as pb

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=12)


@st.composite
def columns(draw) -> pb.EventColumns:
    """Random EventColumns: ragged lengths, negative enums and any text are all allowed
    (the reader does not judge; it must read what protobuf reads)."""
    n = draw(st.integers(1, 20))
    c = pb.EventColumns()
    c.request_id.extend(draw(st.lists(TEXT, min_size=n, max_size=n)))
    for name, values in (("user_id", TEXT), ("context_text", TEXT), ("country", TEXT),
                         ("site_domain", TEXT), ("timestamp_ms", INT64),
                         ("floor_cpm_micros", INT64), ("device_type", INT32),
                         ("slot_width_px", INT32), ("slot_height_px", INT32),
                         ("auction_type", INT32), ("test", st.booleans())):
        getattr(c, name).extend(draw(st.lists(values, max_size=n + 1)))
    for name in LISTS:
        getattr(c, name).extend(draw(st.lists(TEXT, max_size=6)))
        getattr(c, f"{name}_count").extend(draw(st.lists(st.integers(0, 2**32 - 1),
                                                         max_size=n)))
    return c


def same_as_protobuf(raw: bytes, cols: pb.EventColumns) -> None:
    batch_id, deadline_ms, got, longest = _wire.read_columns(raw)
    req = pb.BidRequest.FromString(raw)
    assert (batch_id, deadline_ms) == (req.batch_id, req.deadline_ms)
    names = [*SCALARS, *LISTS, *(f"{name}_count" for name in LISTS)]
    for name in names:
        want = list(getattr(req.columns, name))
        assert list(got.get(name, [])) == [int(v) if isinstance(v, bool) else v
                                           for v in want], name
        if want and isinstance(want[0], str):
            assert longest[name] == max(len(v.encode()) for v in want), name
    assert set(got) <= set(names)
    assert set(longest) == {name for name, v in got.items() if isinstance(v, list)}


@settings(max_examples=150, deadline=None)
@given(columns(), TEXT, st.integers(-(2**63), 2**63 - 1))
def test_read_columns_reads_what_protobuf_reads(cols, batch_id, deadline_ms):
    raw = pb.BidRequest(batch_id=batch_id, deadline_ms=deadline_ms,
                        columns=cols).SerializeToString()
    same_as_protobuf(raw, cols)


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    return bytes(out + bytes([v]))


def test_unpacked_numbers_and_unknown_fields_are_read():
    """Numbers one tag each (what proto2 writers send) and fields from a newer schema."""
    c = pb.EventColumns(request_id=["a", "b"])
    body = c.SerializeToString()
    for v in (-5, 2**40):
        body += varint(5 << 3) + varint(v)  # floor_cpm_micros, unpacked
    for v in (-1, 3):
        body += varint(8 << 3) + varint(v)  # slot_width_px: int32, -1 as 10 bytes
    body += varint(99 << 3 | 2) + varint(3) + b"xyz"  # unknown field
    body += varint(98 << 3 | 5) + b"\0\0\0\0"  # unknown fixed32
    raw = varint(4 << 3 | 2) + varint(len(body)) + body + varint(3 << 3) + varint(40)
    same_as_protobuf(raw, c)
    assert _wire.read_columns(raw)[2]["slot_width_px"].tolist() == [-1, 3]


def test_everything_else_is_left_to_protobuf():
    cols = pb.EventColumns(request_id=["a"], user_id=["u"])
    good = pb.BidRequest(batch_id="b", columns=cols).SerializeToString()
    assert _wire.read_columns(good) is not None
    events = pb.BidRequest(events=[pb.AdEvent(request_id="a")]).SerializeToString()
    invalid_utf8 = good.replace(b"u", b"\xff")
    cases = {
        "per-event form": events,
        "empty request": b"",
        "no request ids": pb.BidRequest(columns=pb.EventColumns(user_id=["u"])).SerializeToString(),
        "columns in two pieces": good + pb.BidRequest(columns=cols).SerializeToString(),
        "invalid UTF-8": invalid_utf8,
        "truncated": good[:-1],
        "a group": good + varint(7 << 3 | 3),
    }
    for name, raw in cases.items():
        assert _wire.read_columns(raw) is None, name


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_write_columns_is_a_bid_response(data):
    n = data.draw(st.integers(0, 30))
    rid = data.draw(st.lists(TEXT, min_size=n, max_size=n))
    bid = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.int64)
    price, value = (np.array(data.draw(st.lists(INT64, min_size=n, max_size=n)), dtype=np.int64)
                    for _ in range(2))
    campaign, creative = (data.draw(st.lists(TEXT, min_size=n, max_size=n)) for _ in range(2))
    score = np.array(data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)),
                     dtype=np.float32)
    reason = np.array(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)),
                      dtype=np.int64)
    errors = data.draw(st.dictionaries(st.integers(0, max(n - 1, 0)), TEXT)) if n else {}
    batch_id, version = data.draw(TEXT), data.draw(TEXT)
    latency = data.draw(st.integers(0, 2**40))
    raw = _wire.write_columns(batch_id, rid, bid, price, campaign, creative, score, reason,
                              value, errors, version) + _wire.latency_field(latency)
    resp = pb.BidResponse.FromString(raw)
    c = resp.columns
    assert resp.HasField("columns")
    assert (resp.batch_id, resp.world_version, resp.server_latency_us) == \
        (batch_id, version, latency)
    assert list(c.request_id) == rid
    assert list(c.bid) == bid.astype(bool).tolist()
    assert list(c.price_cpm_micros) == price.tolist()
    assert list(c.value_cpm_micros) == value.tolist()
    assert (list(c.campaign_id), list(c.creative_id)) == (campaign, creative)
    assert np.array(c.score, dtype=np.float32).tobytes() == score.tobytes()
    assert list(c.no_bid_reason) == reason.tolist()
    assert dict(c.error) == errors


def test_write_columns_refuses_unequal_columns():
    z = np.zeros(2, dtype=np.int64)
    try:
        _wire.write_columns("", ["a", "b"], z, z, ["", ""], [""], np.zeros(2, np.float32), z, z,
                            {}, "")
    except ValueError as exc:
        assert "unequal" in str(exc)
    else:
        raise AssertionError("unequal columns were written")


def test_the_codec_knows_every_field_of_the_messages_it_reads_and_writes():
    """adbid._wire reads BidRequest/EventColumns and writes BidResponse/DecisionColumns from
    bytes, by field number. A field added to the proto (or renumbered) fails here until the
    codec handles it, instead of being skipped silently on the fast path."""
    for message, known in _wire.FIELDS.items():
        descriptor = getattr(pb, message).DESCRIPTOR
        in_proto = {f.name: f.number for f in descriptor.fields}
        assert known == in_proto, f"{message}: codec {known} != proto {in_proto}"


def test_each_column_is_read_as_its_proto_type():
    f = pb.EventColumns.DESCRIPTOR.fields[0]
    by_type = {f.TYPE_STRING: (1, 0), f.TYPE_INT64: (2, 64), f.TYPE_INT32: (2, 32),
               f.TYPE_ENUM: (2, 32), f.TYPE_UINT32: (2, 33), f.TYPE_BOOL: (2, 1)}
    kinds = _wire.column_kinds()
    for field in pb.EventColumns.DESCRIPTOR.fields:
        assert kinds[field.number] == by_type[field.type], field.name
    numbered = {f.number for f in pb.EventColumns.DESCRIPTOR.fields}
    assert all(kind == (0, 0) for n, kind in enumerate(kinds) if n not in numbered)

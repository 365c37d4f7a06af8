"""The spend ledger's records and their binary form.

A record is  u32 payload length | u32 crc32(payload) | payload. Replay stops at
the first short or corrupt record (a torn tail after a crash) and truncates the
file there. Payload kinds:

    RESERVE   a bid's reservation        CLOSE     its settlement or release
    CAMPAIGN  a budget or pause change   SPENT     committed spend (snapshots only)
    RESERVE_BATCH  a batch's reservations as packed columns (what bidding writes: one
                   record and one CRC a batch; replayed as individual RESERVEs)
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

# A reservation's states. IN_DOUBT: its window passed without a notice; its money stays
# reserved for the late-win window (a win may still come), then it is EXPIRED. BILLED: a
# billing notice settled it, or corrected a win's price (the record's cost is the change).
OPEN, WON, LOST, EXPIRED, LATE_WON, IN_DOUBT, BILLED = 0, 1, 2, 3, 4, 5, 6
SETTLED = (WON, LATE_WON, BILLED)  # states whose records add their settled cost to spend
RESERVE, CLOSE, CAMPAIGN, SPENT, RESERVE_BATCH = 1, 2, 3, 4, 5

_HEAD = struct.Struct("<II")
_RESERVE = struct.Struct("<Bqqqqq")  # kind, user_key, price, cost, reserved_ms, expires_ms
_CLOSE = struct.Struct("<BBqqq")  # kind, state, clearing (-1 = none), settled cost, closed_ms
_CAMPAIGN = struct.Struct("<Bqbq")  # kind, budget, active, unix_ms
_SPENT = struct.Struct("<Bq")
_STR = struct.Struct("<H")
_BATCH = struct.Struct("<BIqq")  # kind, count, reserved_ms, expires_ms


def _s(text: str) -> bytes:
    b = text.encode()
    return _STR.pack(len(b)) + b


def _frame(payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class Reserve:
    request_id: str
    campaign_id: str
    user_key: int
    price_cpm_micros: int
    cost_micros: int
    reserved_unix_ms: int
    expires_unix_ms: int

    def encode(self) -> bytes:
        return _frame(_RESERVE.pack(RESERVE, self.user_key, self.price_cpm_micros,
                                    self.cost_micros, self.reserved_unix_ms, self.expires_unix_ms)
                      + _s(self.request_id) + _s(self.campaign_id))


def _texts(values: list[str]) -> tuple[bytes, bytes]:
    """(UTF-8 byte lengths as <u2, the strings' UTF-8 bytes back to back). Ids are ASCII as a
    rule: then one join and one encode do it, with no per-string call in Python."""
    import numpy as np

    joined = "".join(values)
    data = joined.encode()
    if len(data) == len(joined):  # ASCII: characters are bytes
        lengths = np.fromiter(map(len, values), dtype="<u2", count=len(values))
    else:
        lengths = np.array([len(v.encode()) for v in values], dtype="<u2")
    return lengths.tobytes(), data


@dataclass
class ReserveBatch:
    """The reservations of one batch of bids, sharing their times."""

    request_ids: list[str]
    campaign_ids: list[str]
    user_keys: list[int]
    prices_cpm_micros: list[int]
    costs_micros: list[int]
    reserved_unix_ms: int
    expires_unix_ms: int

    def encode(self) -> bytes:
        import numpy as np

        rid_lens, rid = _texts(self.request_ids)
        cid_lens, cid = _texts(self.campaign_ids)
        return _frame(b"".join((
            _BATCH.pack(RESERVE_BATCH, len(self.request_ids), self.reserved_unix_ms,
                        self.expires_unix_ms),
            np.array(self.user_keys, dtype="<i8").tobytes(),
            np.array(self.prices_cpm_micros, dtype="<i8").tobytes(),
            np.array(self.costs_micros, dtype="<i8").tobytes(),
            rid_lens, cid_lens, rid, cid)))

    @staticmethod
    def expand(payload: bytes) -> Iterator[Reserve]:
        import numpy as np

        _, n, at, expires = _BATCH.unpack_from(payload)
        off = _BATCH.size
        cols = []
        for dtype, size in (("<i8", 8), ("<i8", 8), ("<i8", 8), ("<u2", 2), ("<u2", 2)):
            cols.append(np.frombuffer(payload, dtype=dtype, count=n, offset=off).tolist())
            off += n * size
        users, prices, costs, rid_len, cid_len = cols
        rids: list[str] = []
        cids: list[str] = []
        for lengths, out in ((rid_len, rids), (cid_len, cids)):
            for length in lengths:
                out.append(payload[off:off + length].decode())
                off += length
        for i in range(n):
            yield Reserve(rids[i], cids[i], users[i], prices[i], costs[i], at, expires)


@dataclass
class Close:
    request_id: str
    state: int
    clearing_cpm_micros: int | None
    settled_cost_micros: int
    closed_unix_ms: int
    campaign_id: str = ""  # carried so that a replay without the RESERVE still knows it
    price_cpm_micros: int = 0

    def encode(self) -> bytes:
        clearing = -1 if self.clearing_cpm_micros is None else self.clearing_cpm_micros
        return _frame(_CLOSE.pack(CLOSE, self.state, clearing, self.settled_cost_micros,
                                  self.closed_unix_ms)
                      + _s(self.request_id) + _s(self.campaign_id)
                      + struct.pack("<q", self.price_cpm_micros))


@dataclass
class CampaignChange:
    campaign_id: str
    budget_micros: int
    active: bool
    change: str
    reason: str
    unix_ms: int

    def encode(self) -> bytes:
        return _frame(_CAMPAIGN.pack(CAMPAIGN, self.budget_micros, int(self.active), self.unix_ms)
                      + _s(self.campaign_id) + _s(self.change) + _s(self.reason))


@dataclass
class Spent:
    campaign_id: str
    spent_micros: int

    def encode(self) -> bytes:
        return _frame(_SPENT.pack(SPENT, self.spent_micros) + _s(self.campaign_id))


def _strings(payload: bytes, offset: int, n: int) -> tuple[list[str], int]:
    out = []
    for _ in range(n):
        (length,) = _STR.unpack_from(payload, offset)
        offset += 2
        out.append(payload[offset:offset + length].decode())
        offset += length
    return out, offset


def read_record(payload: bytes):
    """One record from its payload (the bytes after the length and CRC)."""
    kind = payload[0]
    if kind == RESERVE:
        _, user_key, price, cost, at, expires = _RESERVE.unpack_from(payload)
        (rid, cid), _ = _strings(payload, _RESERVE.size, 2)
        return Reserve(rid, cid, user_key, price, cost, at, expires)
    if kind == CLOSE:
        _, state, clearing, cost, at = _CLOSE.unpack_from(payload)
        (rid, cid), off = _strings(payload, _CLOSE.size, 2)
        (price,) = struct.unpack_from("<q", payload, off)
        return Close(rid, state, None if clearing < 0 else clearing, cost, at, cid, price)
    if kind == CAMPAIGN:
        _, budget, active, at = _CAMPAIGN.unpack_from(payload)
        (cid, change, reason), _ = _strings(payload, _CAMPAIGN.size, 3)
        return CampaignChange(cid, budget, bool(active), change, reason, at)
    if kind == SPENT:
        _, spent = _SPENT.unpack_from(payload)
        (cid,), _ = _strings(payload, _SPENT.size, 1)
        return Spent(cid, spent)
    raise ValueError(f"unknown ledger record kind {kind}")


def now_ms() -> int:
    return int(time.time() * 1000)

"""The spend ledger: budgets, open reservations, settlement, release, durability.

A bid reserves the cost of one impression at its price (the decision core adds
it to `reserved_micros`; `record_bids` remembers which request it belongs to).
A win or billing notice settles it at the clearing price; a loss, or no notice
within the reservation window, releases it. Notices are idempotent by request
id. Every change is journalled and `flush()` writes it to the durable store
(adbid.ledger_store) before the caller acknowledges anything.

Invariant, for every campaign at every instant (only late wins, which the
exchange already charged, can break it):  spent + reserved <= budget.

All mutation happens on the server's event-loop thread (the decision core runs
inline there), so the books need no lock. Store writes run on one writer
thread, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adbid.campaigns import CampaignTable
from adbid.ledger_store import (EXPIRED, LATE_WON, LOST, OPEN, WON, CampaignChange, Close,
                                LedgerStore, Reserve, now_ms)
from adbid.money import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb

log = logging.getLogger(__name__)

RECENT_CLOSED = 500_000  # closed request ids kept in memory; older ones are looked up in the store


@dataclass(slots=True)
class Reservation:
    campaign_row: int
    price_cpm_micros: int
    cost_micros: int
    expires_unix_ms: int
    user_key: int


@dataclass(slots=True)
class NoticeResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""
    released: Reservation | None = None  # set when a loss released a reservation


class LedgerError(ValueError):
    """A campaign change that the books refuse."""


class SpendLedger:
    def __init__(self, campaigns: CampaignTable, store: LedgerStore | None = None,
                 reservation_ttl_s: float = 300.0) -> None:
        self.campaign_ids = campaigns.ids
        self.row_of = campaigns.row_of
        self.budget_micros = campaigns.budget_micros.copy()
        self.active = campaigns.active.copy()
        self.spent_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reserved_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.open: dict[str, Reservation] = {}
        self.closed: OrderedDict[str, int] = OrderedDict()  # request id -> state, newest last
        self.late_wins = 0
        self.expired = 0
        self.store = store
        self._reserves: list[Reserve] = []
        self._closes: list[Close] = []
        self._changes: list[CampaignChange] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="adbid-ledger") if store else None
        if store is not None:
            self._load(store)

    # -- start-up -----------------------------------------------------------------

    def _load(self, store: LedgerStore) -> None:
        snap = store.load(RECENT_CLOSED)
        unknown = set()
        for cid, (budget, active) in snap.campaigns.items():
            if (row := self.row_of.get(cid)) is None:
                unknown.add(cid)
                continue
            self.budget_micros[row] = budget
            self.active[row] = 1 if active else 0
        for cid, spent in snap.spent.items():
            if (row := self.row_of.get(cid)) is None:
                unknown.add(cid)
                continue
            self.spent_micros[row] = spent
        for rid, cid, user_key, price, cost, expires in snap.open:
            if (row := self.row_of.get(cid)) is None:
                unknown.add(cid)
                continue
            self.open[rid] = Reservation(row, price, cost, expires, user_key)
            self.reserved_micros[row] += cost
        for rid, state in reversed(snap.recent_closed):
            self.closed[rid] = state
        if unknown:
            log.warning("ledger %s has rows for %d campaigns this world lacks (ignored): %s",
                        store.path, len(unknown), sorted(unknown)[:10])
        log.info("ledger %s: %d open reservations (%d micros), %d micros spent, %d campaign "
                 "overrides", store.path, len(self.open), int(self.reserved_micros.sum()),
                 int(self.spent_micros.sum()), len(snap.campaigns))
        if over := self.violations():
            log.error("ledger: spent + reserved exceeds the budget for %s", over[:10])

    # -- bids ---------------------------------------------------------------------

    def record_bids(self, request_ids: list[str], campaign_rows: np.ndarray,
                    price_cpm_micros: np.ndarray, user_keys: np.ndarray,
                    now_unix_ms: int | None = None) -> None:
        """Journal the reservations the decision core just made (non-test bids only)."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        expires = now + self.reservation_ttl_ms
        ids = self.campaign_ids
        for rid, c, p, u in zip(request_ids, campaign_rows.tolist(), price_cpm_micros.tolist(),
                                user_keys.astype(np.int64).tolist()):
            cost = impression_cost_micros(p)
            self.open[rid] = Reservation(c, p, cost, expires, u)
            self._reserves.append(Reserve(rid, ids[c], u, p, cost, now, expires))

    def knows(self, request_id: str) -> bool:
        """Has this request id bid before (open, or closed recently)? Such ids cannot bid again."""
        return request_id in self.open or request_id in self.closed

    # -- notices ------------------------------------------------------------------

    def apply(self, request_id: str, outcome: int, clearing_cpm_micros: int,
              stored: tuple | None = None, now_unix_ms: int | None = None) -> NoticeResult:
        """Apply one win/loss/billing notice (adbid.v1.OutcomeType).

        `stored`: the store's row for a request id that is neither open nor in
        memory (see `find_stored`); without it such a notice is "unknown".
        """
        now = now_ms() if now_unix_ms is None else now_unix_ms
        if outcome not in (pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING):
            return NoticeResult(False, error=f"type: unknown outcome type {outcome}")
        if clearing_cpm_micros < 0:
            return NoticeResult(False, error="clearing_price_cpm_micros: negative")
        res = self.open.get(request_id)
        if res is None:
            state = self.closed.get(request_id)
            if state is None and stored is not None:
                state = stored[0]
            if state is None:
                return NoticeResult(False, error="request_id: no bid with this id is known")
            if state == EXPIRED and outcome != pb.OUTCOME_TYPE_LOSS:
                return self._late_win(request_id, clearing_cpm_micros, stored, now)
            return NoticeResult(True, duplicate=True)
        if outcome == pb.OUTCOME_TYPE_LOSS:
            self.reserved_micros[res.campaign_row] -= res.cost_micros
            self._close(request_id, LOST, None, 0, now)
            return NoticeResult(True, released=res)
        clearing = clearing_cpm_micros or res.price_cpm_micros  # 0 = "not given": the bid
        if clearing > res.price_cpm_micros:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {res.price_cpm_micros}")
        cost = impression_cost_micros(clearing)
        self.reserved_micros[res.campaign_row] -= res.cost_micros
        self.spent_micros[res.campaign_row] += cost
        self._close(request_id, WON, clearing, cost, now)
        return NoticeResult(True)

    def _close(self, request_id: str, state: int, clearing: int | None, cost: int,
               now: int) -> None:
        self.open.pop(request_id, None)
        self.closed[request_id] = state
        self.closed.move_to_end(request_id)
        if len(self.closed) > RECENT_CLOSED:
            self.closed.popitem(last=False)
        self._closes.append(Close(request_id, state, clearing, cost, now))

    def _late_win(self, request_id: str, clearing_cpm_micros: int, stored: tuple | None,
                  now: int) -> NoticeResult:
        if stored is None:
            return NoticeResult(False, error="request_id: expired bid not found in the store")
        _, cid, _, price, _ = stored
        clearing = clearing_cpm_micros or price
        if clearing > price:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {price}")
        cost = impression_cost_micros(clearing)
        if (row := self.row_of.get(cid)) is not None:
            self.spent_micros[row] += cost
        self._close(request_id, LATE_WON, clearing, cost, now)
        self.late_wins += 1
        log.warning("late win for %s after its reservation expired: booked %d micros to %s",
                    request_id, cost, cid)
        return NoticeResult(True)

    def needs_store_lookup(self, request_id: str, outcome: int) -> bool:
        """True when applying this notice needs the stored row (old or expired request ids)."""
        if request_id in self.open:
            return False
        state = self.closed.get(request_id)
        return state is None or (state == EXPIRED and outcome != pb.OUTCOME_TYPE_LOSS)

    async def find_stored(self, request_id: str) -> tuple | None:
        if self.store is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self.store.find, request_id)

    # -- expiry -------------------------------------------------------------------

    def expire(self, now_unix_ms: int | None = None) -> list[Reservation]:
        """Release reservations past their window; returns them."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        gone = [rid for rid, r in self.open.items() if r.expires_unix_ms <= now]
        released = []
        for rid in gone:
            res = self.open[rid]
            self.reserved_micros[res.campaign_row] -= res.cost_micros
            self._close(rid, EXPIRED, None, 0, now)
            released.append(res)
        self.expired += len(gone)
        return released

    # -- campaigns ----------------------------------------------------------------

    def update_campaign(self, campaign_id: str, budget_micros: int | None, active: bool | None,
                        reason: str) -> int:
        """Validate and journal a budget or pause change; returns the campaign row."""
        row = self.row_of.get(campaign_id)
        if row is None:
            raise KeyError(campaign_id)
        changes = []
        budget = int(self.budget_micros[row])
        if budget_micros is not None:
            committed = int(self.spent_micros[row] + self.reserved_micros[row])
            if budget_micros < committed:
                raise LedgerError(f"budget_micros {budget_micros} is below what {campaign_id} "
                                  f"has spent and reserved ({committed})")
            changes.append(f"budget_micros {budget} -> {budget_micros}")
            budget = budget_micros
        is_active = bool(self.active[row])
        if active is not None and active != is_active:
            changes.append(f"active {is_active} -> {active}")
            is_active = active
        if not changes:
            return row
        self.budget_micros[row] = budget
        self.active[row] = 1 if is_active else 0
        self._changes.append(CampaignChange(campaign_id, budget, is_active, "; ".join(changes),
                                            reason or "(no reason given)", now_ms()))
        log.info("campaign %s: %s (%s)", campaign_id, "; ".join(changes), reason or "no reason")
        return row

    # -- durability ---------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything journalled so far; returns once it (and all before it) is durable."""
        if self.store is None:
            self._reserves, self._closes, self._changes = [], [], []
            return
        reserves, closes, changes = self._reserves, self._closes, self._changes
        self._reserves, self._closes, self._changes = [], [], []
        # Submitted even when empty: the writer is FIFO, so when this job is done,
        # every earlier write, which may hold this caller's entries, is done too.
        await asyncio.get_running_loop().run_in_executor(
            self._writer, self.store.write, reserves, closes, changes)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self.store.close()

    def violations(self) -> list[str]:
        """Campaigns breaking spent + reserved <= budget (empty when the books are right)."""
        over = np.flatnonzero(self.spent_micros + self.reserved_micros > self.budget_micros)
        return [self.campaign_ids[c] for c in over]


def open_store(path: Path | None, synchronous: str = "NORMAL") -> LedgerStore | None:
    return None if path is None else LedgerStore(path, synchronous)


__all__ = ["SpendLedger", "Reservation", "NoticeResult", "LedgerError", "open_store", "OPEN"]

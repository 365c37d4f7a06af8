"""The spend ledger: budgets, open reservations, settlement, release, durability.

A bid reserves the cost of one impression at its price (the decision core adds
it to `reserved_micros`; `record_bids` remembers which request it belongs to).
A win or billing notice settles it at the clearing price; a loss, or no notice
within the reservation window, releases it. Notices are idempotent by request
id: the last `closed_capacity` closed request ids are remembered; a notice for
an older one is refused as unknown, so it can never be counted twice. Every
change is journalled and `flush()` writes it to the durable log
(adbid.money.journal) before the caller acknowledges anything; at start-up the
books are rebuilt from the log.

Invariant, for every campaign at every instant (only late wins, which the
exchange already charged, can break it):  spent + reserved <= budget.

All mutation happens on the server's event-loop thread (the decision core runs
inline there), so the books need no lock. Log writes run on one writer thread, in order.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

import numpy as np

from adbid.money import records as states  # WON, LOST, EXPIRED, LATE_WON
from adbid.money.journal import LedgerLog, snapshot
from adbid.money.records import CampaignChange, Close, Reserve, ReserveBatch, Spent, now_ms
from adbid.money.units import impression_cost_micros, impression_costs_micros
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

log = logging.getLogger(__name__)

CLOSED_CAPACITY = 500_000  # closed request ids remembered for idempotency (~200 bytes each)


class Reservation(NamedTuple):
    """An open reservation. Stored in SpendLedger.open as a plain tuple in this field order:
    CPython stops tracking tuples of ints in its cyclic GC, where hundreds of thousands of
    tracked objects made full collections take 77 ms (measured) and answers late."""

    campaign_row: int
    price_cpm_micros: int
    cost_micros: int
    expires_unix_ms: int
    user_key: int


ROW, PRICE, COST, EXPIRES, USER = range(5)  # indices into an open reservation tuple


@dataclass(slots=True)
class NoticeResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""
    released: Reservation | None = None  # set when a loss released a reservation


class LedgerError(ValueError):
    """A campaign change that the books refuse."""


class SpendLedger:
    def __init__(self, campaigns: CampaignTable, store: LedgerLog | None = None,
                 reservation_ttl_s: float = 300.0,
                 closed_capacity: int = CLOSED_CAPACITY, share: tuple[int, int] = (0, 1)) -> None:
        """`share` = (worker, workers): this process owns that slice of every budget (see
        `slice_of`); (0, 1) is the whole budget."""
        worker, workers = share
        if not 0 <= worker < workers:
            raise ValueError(f"ledger share: worker {worker} of {workers}")
        self.share = share
        self.campaign_ids = campaigns.ids
        self.row_of = campaigns.row_of
        self.budget_micros = self.slice_of(campaigns.budget_micros)
        self.active = campaigns.active.copy()
        self.spent_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reserved_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.open: dict[str, tuple] = {}  # request id -> Reservation fields as a plain tuple
        # (expiry, serial, request ids) per group of bids sharing an expiry; a heap. Closed
        # reservations are skipped when their time comes.
        self._expiries: list[tuple[int, int, tuple[str, ...]]] = []
        self._serial = 0
        # Closed request id -> (state, campaign row, bid price), oldest first.
        self.closed: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self.closed_capacity = closed_capacity
        self.late_wins = 0
        self.expired = 0
        self.store = store
        self._journal: list = []
        if store is not None:
            self._load(store)
            store.open()

    def slice_of(self, budget_micros):
        """This worker's slice of budgets (an int or an int64 array): an even split, the
        remainder to worker 0. Slices add up to the budget exactly, and each worker keeps
        spent + reserved <= its slice without any shared state, so no set of workers can
        overspend."""
        worker, workers = self.share
        if workers == 1:
            return budget_micros.copy() if isinstance(budget_micros, np.ndarray) \
                else int(budget_micros)
        part = budget_micros // workers
        return part + (budget_micros - part * workers if worker == 0 else 0)

    # -- start-up -----------------------------------------------------------------

    def _load(self, store: LedgerLog) -> None:
        """Rebuild the books by replaying the log."""
        t0 = now_ms()
        unknown: set[str] = set()
        by_expiry: dict[int, list[str]] = {}
        row_of, records = self.row_of, 0
        for rec in store.replay():
            records += 1
            row = row_of.get(rec.campaign_id, -1)
            if row < 0:
                unknown.add(rec.campaign_id)
                continue
            if isinstance(rec, Reserve):
                self.open[rec.request_id] = (row, rec.price_cpm_micros, rec.cost_micros,
                                             rec.expires_unix_ms, rec.user_key)
                self.reserved_micros[row] += rec.cost_micros
                by_expiry.setdefault(rec.expires_unix_ms, []).append(rec.request_id)
            elif isinstance(rec, Close):
                res = self.open.pop(rec.request_id, None)
                if res is not None:
                    self.reserved_micros[row] -= res[COST]
                if rec.state in (states.WON, states.LATE_WON):
                    self.spent_micros[row] += rec.settled_cost_micros
                self._remember(rec.request_id, rec.state, row, rec.price_cpm_micros)
            elif isinstance(rec, CampaignChange):
                self.budget_micros[row] = rec.budget_micros
                self.active[row] = 1 if rec.active else 0
            elif isinstance(rec, Spent):
                self.spent_micros[row] += rec.spent_micros
        for expires, rids in by_expiry.items():
            self._expire_at(expires, [r for r in rids if r in self.open])
        if unknown:
            log.warning("ledger %s has records for %d campaigns this world lacks (ignored): %s",
                        store.path, len(unknown), sorted(unknown)[:10])
        log.info("ledger %s: replayed %d records in %d ms: %d open reservations (%d micros), "
                 "%d micros spent", store.path, records, now_ms() - t0, len(self.open),
                 int(self.reserved_micros.sum()), int(self.spent_micros.sum()))
        if over := self.violations():
            log.error("ledger: spent + reserved exceeds the budget for %s", over[:10])

    def extend(self, campaigns: CampaignTable) -> None:
        """Bind to a (reloaded) world's campaigns: the current ones must come first, in
        order; new ones are appended with the world's budget. Existing campaigns keep the
        ledger's budget and pause state (change those with UpdateCampaign)."""
        old = self.campaign_ids
        new = campaigns.ids
        if new[:len(old)] != old:
            missing = next((i for i, cid in enumerate(old) if i >= len(new) or new[i] != cid))
            raise LedgerError(
                f"campaigns: row {missing} is {old[missing]!r} in the running world and "
                f"{new[missing] if missing < len(new) else 'absent'!r} in the new one; a new "
                "world may add campaigns at the end, or deactivate them, but not remove or "
                "reorder them")
        extra = len(new) - len(old)
        if extra == 0:
            return
        grow = lambda a, tail: np.concatenate([a, tail.astype(a.dtype)])  # noqa: E731
        self.budget_micros = grow(self.budget_micros,
                                  self.slice_of(campaigns.budget_micros[len(old):]))
        self.active = grow(self.active, campaigns.active[len(old):])
        self.spent_micros = grow(self.spent_micros, np.zeros(extra))
        self.reserved_micros = grow(self.reserved_micros, np.zeros(extra))
        self.campaign_ids = new
        self.row_of = campaigns.row_of
        log.info("ledger: %d campaigns added by the new world", extra)

    def _remember(self, request_id: str, state: int, row: int, price: int) -> None:
        closed = self.closed
        closed[request_id] = (state, row, price)
        closed.move_to_end(request_id)
        if len(closed) > self.closed_capacity:
            closed.popitem(last=False)

    # -- bids ---------------------------------------------------------------------

    def record_bids(self, request_ids: list[str], campaign_rows: np.ndarray,
                    price_cpm_micros: np.ndarray, user_keys: np.ndarray,
                    now_unix_ms: int | None = None,
                    hold_ms: np.ndarray | None = None) -> None:
        """Journal the reservations the decision core just made (non-test bids only). Each
        is held for the longer of the reservation TTL and its `hold_ms` (OpenRTB's exp)."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        if hold_ms is not None and (hold_ms > self.reservation_ttl_ms).any():
            windows = np.maximum(hold_ms.astype(np.int64), self.reservation_ttl_ms)
            for window in np.unique(windows).tolist():
                pick = np.flatnonzero(windows == window)
                self._record([request_ids[i] for i in pick.tolist()],
                             campaign_rows[pick], price_cpm_micros[pick], user_keys[pick],
                             now, now + window)
            return
        self._record(request_ids, campaign_rows, price_cpm_micros, user_keys, now,
                     now + self.reservation_ttl_ms)

    def _record(self, request_ids: list[str], campaign_rows: np.ndarray,
                price_cpm_micros: np.ndarray, user_keys: np.ndarray, now: int,
                expires: int) -> None:
        rows = campaign_rows.tolist()
        prices = price_cpm_micros.tolist()
        costs = impression_costs_micros(np.ascontiguousarray(price_cpm_micros, np.int64))
        users = user_keys.astype(np.int64).tolist()
        self.open.update(zip(request_ids, zip(rows, prices, costs, repeat(expires), users)))
        self._expire_at(expires, request_ids)
        ids = self.campaign_ids
        self._journal.append(ReserveBatch(list(request_ids), [ids[c] for c in rows], users,
                                          prices, costs, now, expires))

    def _expire_at(self, expires: int, request_ids: list[str]) -> None:
        if request_ids:
            self._serial += 1
            heapq.heappush(self._expiries, (expires, self._serial, tuple(request_ids)))

    def knows(self, request_id: str) -> bool:
        """Has this request id bid before (open, or closed recently)? Such ids cannot bid again."""
        return request_id in self.open or request_id in self.closed

    def used(self, request_ids: list[str]) -> list[int]:
        """Positions of ids that have bid before; the scan is C-level (map over dict lookups)
        and per-event Python runs only for the rare reused id."""
        if not (any(map(self.open.__contains__, request_ids))
                or any(map(self.closed.__contains__, request_ids))):
            return []
        return [i for i, rid in enumerate(request_ids) if self.knows(rid)]

    # -- notices ------------------------------------------------------------------

    def apply(self, request_id: str, outcome: int, clearing_cpm_micros: int,
              now_unix_ms: int | None = None) -> NoticeResult:
        """Apply one win/loss/billing notice (adbid.v1.OutcomeType)."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        if outcome not in (pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING):
            return NoticeResult(False, error=f"type: unknown outcome type {outcome}")
        if clearing_cpm_micros < 0:
            return NoticeResult(False, error="clearing_price_cpm_micros: negative")
        res = self.open.get(request_id)
        if res is None:
            closed = self.closed.get(request_id)
            if closed is None:
                return NoticeResult(False, error="request_id: no bid with this id is known "
                                                 "(or it closed too long ago to remember)")
            state, row, price = closed
            if state == states.EXPIRED and outcome != pb.OUTCOME_TYPE_LOSS:
                return self._late_win(request_id, row, price, clearing_cpm_micros, now)
            return NoticeResult(True, duplicate=True)
        if outcome == pb.OUTCOME_TYPE_LOSS:
            self.reserved_micros[res[ROW]] -= res[COST]
            self._close(request_id, res, states.LOST, None, 0, now)
            return NoticeResult(True, released=Reservation(*res))
        clearing = clearing_cpm_micros or res[PRICE]  # 0 = "not given": settle at the bid
        if clearing > res[PRICE]:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {res[PRICE]}")
        cost = impression_cost_micros(clearing)
        self.reserved_micros[res[ROW]] -= res[COST]
        self.spent_micros[res[ROW]] += cost
        self._close(request_id, res, states.WON, clearing, cost, now)
        return NoticeResult(True)

    def _close(self, request_id: str, res: tuple, state: int, clearing: int | None,
               cost: int, now: int) -> None:
        self.open.pop(request_id, None)
        self._remember(request_id, state, res[ROW], res[PRICE])
        self._journal.append(Close(request_id, state, clearing, cost, now,
                                   self.campaign_ids[res[ROW]], res[PRICE]))

    def _late_win(self, request_id: str, row: int, price: int, clearing_cpm_micros: int,
                  now: int) -> NoticeResult:
        clearing = clearing_cpm_micros or price
        if clearing > price:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {price}")
        cost = impression_cost_micros(clearing)
        self.spent_micros[row] += cost
        self._remember(request_id, states.LATE_WON, row, price)
        self._journal.append(Close(request_id, states.LATE_WON, clearing, cost, now,
                                   self.campaign_ids[row], price))
        self.late_wins += 1
        log.warning("late win for %s after its reservation expired: booked %d micros to %s",
                    request_id, cost, self.campaign_ids[row])
        return NoticeResult(True)

    # -- expiry -------------------------------------------------------------------

    def expire(self, now_unix_ms: int | None = None) -> list[Reservation]:
        """Release reservations past their window; returns them."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        gone = []  # the heap gives the groups in expiry order: only what is due is seen
        heap, open_ = self._expiries, self.open
        while heap and heap[0][0] <= now:
            expires, _, rids = heapq.heappop(heap)
            gone += [rid for rid in rids if (r := open_.get(rid)) is not None
                     and r[EXPIRES] == expires]
        released = []
        for rid in gone:
            res = self.open[rid]
            self.reserved_micros[res[ROW]] -= res[COST]
            self._close(rid, res, states.EXPIRED, None, 0, now)
            released.append(Reservation(*res))
        self.expired += len(gone)
        return released

    # -- campaigns ----------------------------------------------------------------

    def update_campaign(self, campaign_id: str, budget_micros: int | None, active: bool | None,
                        reason: str) -> int:
        """Validate and journal a budget or pause change; returns the campaign row.
        `budget_micros` is the campaign's whole budget; this worker books its slice."""
        row = self.row_of.get(campaign_id)
        if row is None:
            raise KeyError(campaign_id)
        changes = []
        budget = int(self.budget_micros[row])
        if budget_micros is not None:
            budget_micros = self.slice_of(int(budget_micros))
            committed = int(self.spent_micros[row] + self.reserved_micros[row])
            if budget_micros < committed:
                raise LedgerError(f"budget_micros {budget_micros} is below what {campaign_id} "
                                  f"has spent and reserved ({committed})"
                                  + (f" in worker {self.share[0]}'s slice of 1/{self.share[1]}"
                                     if self.share[1] > 1 else ""))
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
        self._journal.append(CampaignChange(campaign_id, budget, is_active, "; ".join(changes),
                                            reason or "(no reason given)", now_ms()))
        log.info("campaign %s: %s (%s)", campaign_id, "; ".join(changes), reason or "no reason")
        return row

    # -- durability ---------------------------------------------------------------

    def commit(self) -> asyncio.Future:
        """Make everything journalled so far durable: written at once when the store's writer
        thread is idle, else handed to it. The returned future is done once it (and all
        before it) is durable. Lets a caller do other work (encode the answer)
        while the write happens, then await it before acknowledging."""
        journal, self._journal = self._journal, []
        # Appended even when empty: the writer is FIFO, so when this append is done,
        # every earlier one, which may hold this caller's records, is done too.
        written = self.store.append(journal) if self.store is not None else None
        if written is not None and not written.done():
            # Shielded: a caller cancelled meanwhile (its client gave up) must not cancel
            # the write.
            return asyncio.shield(asyncio.wrap_future(written))
        # No store, or written on this thread already: nothing to wait for.
        done = asyncio.get_running_loop().create_future()
        if written is not None and (exc := written.exception()) is not None:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    async def flush(self) -> None:
        """Write everything journalled so far; returns once it (and all before it) is durable."""
        await self.commit()

    def compact_if_needed(self) -> Future | None:
        """Replace the log by a snapshot of the books once its segment is large; returns the
        compaction's future when one was started (done once the log has switched to it),
        else None. Call right after flush(): the snapshot must reflect exactly the records
        written before it."""
        if self.store is None or not self.store.needs_compaction():
            return None
        if self._journal:
            raise RuntimeError("compact_if_needed() with unflushed records")
        return self.store.compact(snapshot(
            self.campaign_ids, self.budget_micros.tolist(), self.active.tolist(),
            self.spent_micros.tolist(), dict(self.open), list(self.closed.items()), now_ms()))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def violations(self) -> list[str]:
        """Campaigns breaking spent + reserved <= budget (empty when the books are right)."""
        over = np.flatnonzero(self.spent_micros + self.reserved_micros > self.budget_micros)
        return [self.campaign_ids[c] for c in over]

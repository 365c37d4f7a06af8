"""The spend ledger: budgets, open reservations, settlement, release, durability.

A bid reserves the cost of one impression at its price (the decision core adds
it to `reserved_micros`; `record_bids` remembers which request it belongs to).
A win or billing notice settles it at the clearing price; a loss releases it.
A reservation that gets no notice within its window goes *in doubt*: its
frequency count is given back, but its money stays reserved for the late-win
window, since the exchange may still bill it; only then is it released. Notices
are idempotent by request id (the rules are in `apply`): the last
`closed_capacity` closed request ids are remembered; a notice for an older one is
refused as unknown, so it can never be counted twice. Every change is journalled
and `flush()` writes it to the durable log (adbid.money.journal) before the caller
acknowledges anything; at start-up the books are rebuilt from it (adbid.money.replay).

Invariant, for every campaign at every instant:  spent + reserved <= budget. Only
a win that arrives after its reservation's window *and* the late-win window, which
the exchange already charged, can break it.

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

from adbid.money import records as states  # WON, LOST, EXPIRED, LATE_WON, IN_DOUBT, BILLED
from adbid.money.books import CampaignBooks, LedgerError
from adbid.money.feedback import MarketFeedback
from adbid.money.journal import LedgerLog, snapshot
from adbid.money.records import Close, ReserveBatch, now_ms
from adbid.money.replay import replay_into
from adbid.money.units import impression_cost_micros, impression_costs_micros
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

__all__ = ["UNKNOWN_ID", "LedgerError", "NoticeResult", "Reservation", "SpendLedger"]

log = logging.getLogger(__name__)

UNKNOWN_ID = "request_id: no bid with this id is known (or it closed too long ago to remember)"
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
# A live bid's open tuple goes on with its answer, for retries: the content's fingerprint,
# the ad row, the value and the score (absent from reservations replayed from the log).
FINGERPRINT, AD, VALUE, SCORE = range(5, 9)


@dataclass(slots=True)
class NoticeResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""
    released: Reservation | None = None  # set when a loss released a reservation


class SpendLedger(CampaignBooks):
    def __init__(self, campaigns: CampaignTable, store: LedgerLog | None = None,
                 reservation_ttl_s: float = 300.0,
                 closed_capacity: int = CLOSED_CAPACITY, share: tuple[int, int] = (0, 1),
                 late_win_window_s: float = 0.0) -> None:
        """`share` = (worker, workers): this process owns that slice of every budget (see
        `slice_of`); (0, 1) is the whole budget. `late_win_window_s`: how long an expired
        reservation stays in doubt, its money still reserved (0: released at once)."""
        super().__init__(campaigns, share)
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.late_win_window_ms = int(late_win_window_s * 1000)
        self.open: dict[str, tuple] = {}  # request id -> Reservation fields as a plain tuple
        # In doubt: request id -> Reservation fields, `expires` being the window's end.
        self.doubt: dict[str, tuple] = {}
        self._doubt_ends: list[tuple[int, int, tuple[str, ...]]] = []  # a heap, as _expiries
        # (expiry, serial, request ids) per group of bids sharing an expiry; a heap. Closed
        # reservations are skipped when their time comes.
        self._expiries: list[tuple[int, int, tuple[str, ...]]] = []
        self._serial = 0
        # Closed request id -> (state, campaign row, bid price, settled clearing price),
        # oldest first.
        self.closed: OrderedDict[str, tuple[int, int, int, int]] = OrderedDict()
        self.closed_capacity = closed_capacity
        self.late_wins = 0
        self.expired = 0
        self.store = store
        self.feedback = MarketFeedback()  # what notices said about the market
        if store is not None:
            replay_into(self, store)
            store.open()

    def remember(self, request_id: str, state: int, row: int, price: int,
                 clearing: int = 0) -> None:
        """Keep a closed request id (for idempotency), dropping the oldest beyond capacity."""
        closed = self.closed
        closed[request_id] = (state, row, price, clearing)
        closed.move_to_end(request_id)
        if len(closed) > self.closed_capacity:
            closed.popitem(last=False)

    # -- bids ---------------------------------------------------------------------

    def record_bids(self, request_ids: list[str], campaign_rows: np.ndarray,
                    price_cpm_micros: np.ndarray, user_keys: np.ndarray,
                    now_unix_ms: int | None = None,
                    hold_ms: np.ndarray | None = None,
                    answers: tuple[np.ndarray, ...] | None = None) -> None:
        """Journal the reservations the decision core just made (non-test bids only). Each
        is held for the longer of the reservation TTL and its `hold_ms` (OpenRTB's exp).
        `answers`: (fingerprints, ad rows, values, scores) as arrays, kept with each open
        reservation so that a retry gets the same answer (see `retry`)."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        if hold_ms is not None and (hold_ms > self.reservation_ttl_ms).any():
            windows = np.maximum(hold_ms.astype(np.int64), self.reservation_ttl_ms)
            for window in np.unique(windows).tolist():
                pick = np.flatnonzero(windows == window)
                self._record([request_ids[i] for i in pick.tolist()],
                             campaign_rows[pick], price_cpm_micros[pick], user_keys[pick],
                             now, now + window,
                             None if answers is None else tuple(a[pick] for a in answers))
            return
        self._record(request_ids, campaign_rows, price_cpm_micros, user_keys, now,
                     now + self.reservation_ttl_ms, answers)

    def _record(self, request_ids: list[str], campaign_rows: np.ndarray,
                price_cpm_micros: np.ndarray, user_keys: np.ndarray, now: int,
                expires: int, answers: tuple[np.ndarray, ...] | None = None) -> None:
        rows = campaign_rows.tolist()
        prices = price_cpm_micros.tolist()
        costs = impression_costs_micros(np.ascontiguousarray(price_cpm_micros, np.int64))
        users = user_keys.astype(np.int64).tolist()
        kept = () if answers is None else tuple(a.tolist() for a in answers)
        self.open.update(zip(request_ids, zip(rows, prices, costs, repeat(expires), users,
                                              *kept)))
        self.expire_at(expires, request_ids)
        ids = self.campaign_ids
        self._journal.append(ReserveBatch(list(request_ids), [ids[c] for c in rows], users,
                                          prices, costs, now, expires))

    def expire_at(self, expires: int, request_ids: list[str]) -> None:
        """These open reservations' window ends at `expires` (Unix ms)."""
        if request_ids:
            self._serial += 1
            heapq.heappush(self._expiries, (expires, self._serial, tuple(request_ids)))

    def doubt_ends_at(self, until: int, request_ids: list[str]) -> None:
        """These in-doubt reservations are released at `until` (Unix ms)."""
        if request_ids:
            self._serial += 1
            heapq.heappush(self._doubt_ends, (until, self._serial, tuple(request_ids)))

    def knows(self, request_id: str) -> bool:
        """Has this request id bid before (open, in doubt, or closed recently)?"""
        return request_id in self.open or request_id in self.doubt or request_id in self.closed

    def used(self, request_ids: list[str]) -> list[int]:
        """Positions of ids that have bid before; the scan is C-level (map over dict lookups)
        and per-event Python runs only for the rare reused id."""
        if not (any(map(self.open.__contains__, request_ids))
                or any(map(self.closed.__contains__, request_ids))
                or (self.doubt and any(map(self.doubt.__contains__, request_ids)))):
            return []
        return [i for i, rid in enumerate(request_ids) if self.knows(rid)]

    def retry(self, request_id: str, fingerprint: int) -> tuple | str:
        """A retried bid: its open reservation, answer included (FINGERPRINT..SCORE), when
        it is open and the content is the same; else why it cannot be."""
        res = self.open.get(request_id)
        if res is None:
            return ("request_id: already used by a bid whose reservation is closed (settled, "
                    "released or past its window); a retry must come within the window")
        if len(res) <= SCORE:
            return ("request_id: already used by a bid made before this server restarted; "
                    "its answer is not kept across restarts")
        if res[FINGERPRINT] != fingerprint:
            return "request_id: already used by an earlier bid with different content"
        return res

    # -- notices ------------------------------------------------------------------

    def apply(self, request_id: str, outcome: int, clearing_cpm_micros: int,
              now_unix_ms: int | None = None) -> NoticeResult:
        """Apply one win/loss/billing notice (adbid.v1.OutcomeType). The rules:

        - WIN or BILLING settles an open (or in-doubt) reservation at the clearing price;
          0 means "not given" and settles at the bid price. A price above the bid is
          refused and changes nothing: the reservation stays open for a corrected notice.
        - LOSS releases it, and its frequency count (`released`).
        - After a WIN, a BILLING at another price corrects the spend to that price (the
          exchange bills what billing says); at the same price it is a duplicate.
        - Every other notice for a closed id is a duplicate and changes nothing; when it
          disagrees with what closed it (a second WIN at another price, a WIN after a
          LOSS), `error` says so.
        - A WIN or BILLING after the late-win window is still booked (a late win).
        """
        now = now_ms() if now_unix_ms is None else now_unix_ms
        if outcome not in (pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING):
            return NoticeResult(False, error=f"type: unknown outcome type {outcome}")
        if clearing_cpm_micros < 0:
            return NoticeResult(False, error="clearing_price_cpm_micros: negative")
        res = self.open.get(request_id)
        late = res is None and request_id in self.doubt
        if late:
            res = self.doubt[request_id]
        if res is None:
            return self._closed(request_id, outcome, clearing_cpm_micros, now)
        if outcome == pb.OUTCOME_TYPE_LOSS:
            self.reserved_micros[res[ROW]] -= res[COST]
            self._close(request_id, res, states.LOST, None, 0, now)
            # An in-doubt reservation gave its frequency count back when it expired.
            return NoticeResult(True, released=None if late else Reservation(*res[:5]))
        clearing = clearing_cpm_micros or res[PRICE]  # 0 = "not given": settle at the bid
        if clearing > res[PRICE]:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {res[PRICE]}")
        cost = impression_cost_micros(clearing)
        self.reserved_micros[res[ROW]] -= res[COST]
        self.spent_micros[res[ROW]] += cost
        state = states.LATE_WON if late else \
            states.BILLED if outcome == pb.OUTCOME_TYPE_BILLING else states.WON
        self._close(request_id, res, state, clearing, cost, now)
        if late:
            self.late_wins += 1
        return NoticeResult(True)

    def _closed(self, request_id: str, outcome: int, clearing_cpm_micros: int,
                now: int) -> NoticeResult:
        """A notice for an id that is no longer open or in doubt."""
        closed = self.closed.get(request_id)
        if closed is None:
            return NoticeResult(False, error=UNKNOWN_ID)
        state, row, price, settled = closed
        if outcome == pb.OUTCOME_TYPE_LOSS:
            return NoticeResult(True, duplicate=True, error="" if state in (
                states.LOST, states.EXPIRED) else "already settled; a LOSS changes nothing")
        clearing = clearing_cpm_micros or price
        if clearing > price:
            return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is above "
                                             f"the bid {price}")
        if state == states.EXPIRED:
            return self._late_win(request_id, row, price, clearing, now)
        if state == states.LOST:
            return NoticeResult(True, duplicate=True,
                                error="already released by a LOSS; a WIN or BILLING after it "
                                      "changes nothing")
        if clearing_cpm_micros == 0 or clearing == settled:  # nothing new said
            return NoticeResult(True, duplicate=True)
        if outcome == pb.OUTCOME_TYPE_BILLING and state != states.BILLED:
            change = impression_cost_micros(clearing) - impression_cost_micros(settled)
            self.spent_micros[row] += change
            self.remember(request_id, states.BILLED, row, price, clearing)
            self._journal.append(Close(request_id, states.BILLED, clearing, change, now,
                                       self.campaign_ids[row], price))
            log.info("billing for %s corrected its price %d -> %d", request_id, settled,
                     clearing)
            return NoticeResult(True)
        return NoticeResult(True, duplicate=True,
                            error=f"already settled at {settled}; only a BILLING after a WIN "
                                  "corrects the price")

    def _close(self, request_id: str, res: tuple, state: int, clearing: int | None,
               cost: int, now: int) -> None:
        if self.open.pop(request_id, None) is None:
            self.doubt.pop(request_id, None)
        self.remember(request_id, state, res[ROW], res[PRICE], clearing or 0)
        self._journal.append(Close(request_id, state, clearing, cost, now,
                                   self.campaign_ids[res[ROW]], res[PRICE]))

    def _late_win(self, request_id: str, row: int, price: int, clearing: int,
                  now: int) -> NoticeResult:
        """A win after the late-win window: booked (the exchange charged it), beyond the
        budget if the released money was bid again."""
        cost = impression_cost_micros(clearing)
        self.spent_micros[row] += cost
        self.remember(request_id, states.LATE_WON, row, price, clearing)
        self._journal.append(Close(request_id, states.LATE_WON, clearing, cost, now,
                                   self.campaign_ids[row], price))
        self.late_wins += 1
        log.warning("late win for %s after its late-win window: booked %d micros to %s",
                    request_id, cost, self.campaign_ids[row])
        return NoticeResult(True)

    # -- expiry -------------------------------------------------------------------

    def expire(self, now_unix_ms: int | None = None) -> list[Reservation]:
        """Move reservations past their window into doubt (their money stays reserved for
        the late-win window), and release those whose doubt has ended. Returns the ones
        that just expired, whose frequency counts the caller gives back."""
        now = now_ms() if now_unix_ms is None else now_unix_ms
        expired, in_doubt = [], []
        until = now + self.late_win_window_ms
        for rid in self._due(self._expiries, self.open, now):
            res = self.open[rid]
            expired.append(Reservation(*res[:5]))
            if self.late_win_window_ms > 0:
                del self.open[rid]
                self.doubt[rid] = (*res[:EXPIRES], until, res[USER])
                in_doubt.append(rid)
                self._journal.append(Close(rid, states.IN_DOUBT, None, 0, now,
                                           self.campaign_ids[res[ROW]], res[PRICE]))
            else:
                self.reserved_micros[res[ROW]] -= res[COST]
                self._close(rid, res, states.EXPIRED, None, 0, now)
        self.doubt_ends_at(until, in_doubt)
        for rid in self._due(self._doubt_ends, self.doubt, now):
            res = self.doubt[rid]
            self.reserved_micros[res[ROW]] -= res[COST]
            self._close(rid, res, states.EXPIRED, None, 0, now)
        self.expired += len(expired)
        return expired

    @staticmethod
    def _due(heap: list, table: dict, now: int) -> list[str]:
        """Ids whose time in `table` has come (the heap gives groups in time order: only
        what is due is seen); entries that left the table or moved on are skipped."""
        due = []
        while heap and heap[0][0] <= now:
            at, _, rids = heapq.heappop(heap)
            due += [rid for rid in rids if (r := table.get(rid)) is not None
                    and r[EXPIRES] == at]
        return due

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
            self.spent_micros.tolist(), dict(self.open), list(self.closed.items()), now_ms(),
            dict(self.doubt), self.late_win_window_ms))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

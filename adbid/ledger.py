"""The spend ledger: budgets, open reservations, settlement and release.

A bid reserves the cost of one impression at its price (the decision core adds
it to `reserved_micros`; `record_bids` remembers which request it belongs to).
A win or billing notice settles it at the clearing price, a loss or the expiry
window releases it. Notices are idempotent by request id.

Invariant, for every campaign at every instant (only late wins can break it,
since the exchange already charged them):  spent + reserved <= budget.

All mutation happens on the server's event-loop thread: the decision core
runs inline there, so no lock is needed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from adbid.campaigns import CampaignTable
from adbid.money import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Reservation:
    campaign_row: int
    price_cpm_micros: int
    cost_micros: int
    expires_at_s: float


@dataclass(slots=True)
class NoticeResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""


class SpendLedger:
    def __init__(self, campaigns: CampaignTable, reservation_ttl_s: float = 300.0) -> None:
        self.campaign_ids = campaigns.ids
        self.budget_micros = campaigns.budget_micros.copy()
        self.spent_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reserved_micros = np.zeros(len(campaigns), dtype=np.int64)
        self.reservation_ttl_s = reservation_ttl_s
        self.open: dict[str, Reservation] = {}
        # Request ids already settled or released, for idempotency: id -> (outcome, reservation).
        self.closed: dict[str, tuple[int, Reservation]] = {}
        self.late_wins = 0
        self.expired = 0

    def record_bids(self, request_ids: list[str], campaign_rows: np.ndarray,
                    price_cpm_micros: np.ndarray, now_s: float | None = None) -> None:
        """Remember the reservations the decision core just made (non-test bids only)."""
        expires = (time.monotonic() if now_s is None else now_s) + self.reservation_ttl_s
        for rid, c, p in zip(request_ids, campaign_rows.tolist(), price_cpm_micros.tolist()):
            self.open[rid] = Reservation(c, p, impression_cost_micros(p), expires)

    def is_open(self, request_id: str) -> bool:
        return request_id in self.open

    def apply(self, request_id: str, outcome: int, clearing_cpm_micros: int) -> NoticeResult:
        """Apply one win/loss/billing notice (adbid.v1.OutcomeType)."""
        if outcome not in (pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING):
            return NoticeResult(False, error=f"type: unknown outcome type {outcome}")
        if clearing_cpm_micros < 0:
            return NoticeResult(False, error="clearing_price_cpm_micros: negative")
        res = self.open.get(request_id)
        if res is None:
            closed = self.closed.get(request_id)
            if closed is None:
                return NoticeResult(False, error="request_id: no bid with this id is known")
            how, res = closed
            if how == -1 and outcome != pb.OUTCOME_TYPE_LOSS:  # expired, then won: book it
                return self._late_win(request_id, res, clearing_cpm_micros)
            return NoticeResult(True, duplicate=True)
        if outcome == pb.OUTCOME_TYPE_LOSS:
            self.reserved_micros[res.campaign_row] -= res.cost_micros
        else:
            clearing = clearing_cpm_micros or res.price_cpm_micros
            if clearing > res.price_cpm_micros:
                return NoticeResult(False, error=f"clearing_price_cpm_micros: {clearing} is "
                                                 f"above the bid {res.price_cpm_micros}")
            self.reserved_micros[res.campaign_row] -= res.cost_micros
            self.spent_micros[res.campaign_row] += impression_cost_micros(clearing)
        del self.open[request_id]
        self.closed[request_id] = (outcome, res)
        return NoticeResult(True)

    def _late_win(self, request_id: str, res: Reservation, clearing_cpm_micros: int) -> NoticeResult:
        clearing = clearing_cpm_micros or res.price_cpm_micros
        if clearing > res.price_cpm_micros:
            return NoticeResult(False, error="clearing_price_cpm_micros: above the bid")
        self.spent_micros[res.campaign_row] += impression_cost_micros(clearing)
        self.closed[request_id] = (pb.OUTCOME_TYPE_WIN, res)
        self.late_wins += 1
        log.warning("late win for %s after its reservation expired; booked %d micros",
                    request_id, impression_cost_micros(clearing))
        return NoticeResult(True)

    def expire(self, now_s: float | None = None) -> int:
        """Release reservations past their window; returns how many."""
        now = time.monotonic() if now_s is None else now_s
        gone = [rid for rid, r in self.open.items() if r.expires_at_s <= now]
        for rid in gone:
            res = self.open.pop(rid)
            self.reserved_micros[res.campaign_row] -= res.cost_micros
            self.closed[rid] = (-1, res)
        self.expired += len(gone)
        return len(gone)

    def violations(self) -> list[str]:
        """Campaigns breaking spent + reserved <= budget (empty when the books are right)."""
        over = np.flatnonzero(self.spent_micros + self.reserved_micros > self.budget_micros)
        return [self.campaign_ids[c] for c in over]

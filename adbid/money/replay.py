"""Start-up: the spend ledger's books rebuilt from its log (adbid.money.journal).

Each record kind changes the books as it did when it was written: a RESERVE opens a
reservation, a CLOSE moves it on (into doubt, settled, released), a CAMPAIGN change sets
a budget or pause, a SPENT (snapshots) restores committed spend.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from adbid.money import records as states
from adbid.money.journal import LedgerLog
from adbid.money.records import CampaignChange, Close, Reserve, Spent, now_ms

if TYPE_CHECKING:
    from adbid.money.ledger import SpendLedger

log = logging.getLogger(__name__)

COST = 2  # index of the cost in a reservation tuple (adbid.money.ledger.Reservation)


def replay_into(ledger: SpendLedger, store: LedgerLog) -> None:
    """Fill `ledger`'s books (fresh, as built from the world) from `store`'s records."""
    t0 = now_ms()
    unknown: set[str] = set()
    by_expiry: dict[int, list[str]] = {}
    doubt_ends: dict[int, list[str]] = {}
    open_, doubt, reserved, spent = ledger.open, ledger.doubt, ledger.reserved_micros, \
        ledger.spent_micros
    row_of, records = ledger.row_of, 0
    for rec in store.replay():
        records += 1
        row = row_of.get(rec.campaign_id, -1)
        if row < 0:
            unknown.add(rec.campaign_id)
            continue
        if isinstance(rec, Reserve):
            open_[rec.request_id] = (row, rec.price_cpm_micros, rec.cost_micros,
                                     rec.expires_unix_ms, rec.user_key)
            reserved[row] += rec.cost_micros
            by_expiry.setdefault(rec.expires_unix_ms, []).append(rec.request_id)
        elif isinstance(rec, Close):
            res = open_.pop(rec.request_id, None)
            if rec.state == states.IN_DOUBT:  # still reserved, until the late-win window ends
                if res is not None:
                    until = rec.closed_unix_ms + ledger.late_win_window_ms
                    doubt[rec.request_id] = (*res[:3], until, res[4])
                    doubt_ends.setdefault(until, []).append(rec.request_id)
                continue
            res = res or doubt.pop(rec.request_id, None)
            if res is not None:
                reserved[row] -= res[COST]
            if rec.state in states.SETTLED:
                spent[row] += rec.settled_cost_micros
            ledger.remember(rec.request_id, rec.state, row, rec.price_cpm_micros,
                            rec.clearing_cpm_micros or 0)
        elif isinstance(rec, CampaignChange):
            ledger.budget_micros[row] = rec.budget_micros
            ledger.active[row] = 1 if rec.active else 0
        elif isinstance(rec, Spent):
            spent[row] += rec.spent_micros
    for expires, rids in by_expiry.items():
        ledger.expire_at(expires, [r for r in rids if r in open_])
    for until, rids in doubt_ends.items():
        ledger.doubt_ends_at(until, [r for r in rids if r in doubt])
    if unknown:
        log.warning("ledger %s has records for %d campaigns this world lacks (ignored): %s",
                    store.path, len(unknown), sorted(unknown)[:10])
    log.info("ledger %s: replayed %d records in %d ms: %d open reservations and %d in doubt "
             "(%d micros), %d micros spent", store.path, records, now_ms() - t0, len(open_),
             len(doubt), int(reserved.sum()), int(spent.sum()))
    if over := ledger.violations():
        log.error("ledger: spent + reserved exceeds the budget for %s", over[:10])

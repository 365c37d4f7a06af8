"""A process's books per campaign: budget, pause state, spend and reservations as arrays
(what the decision core reads), the budget changes they accept, and this worker's share
of each budget. adbid.money.ledger keeps them: reservations, notices, the log."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from adbid.money.records import CampaignChange, now_ms
from adbid.world.campaigns import CampaignTable

if TYPE_CHECKING:
    from adbid.money.shared import SharedBudgets

log = logging.getLogger(__name__)


class LedgerError(ValueError):
    """A campaign change that the books refuse."""


class CampaignBooks:
    """`share` = (worker, workers): this process owns that slice of every budget (see
    `slice_of`); (0, 1) is the whole budget. Changes are journalled to `_journal`."""

    def __init__(self, campaigns: CampaignTable, share: tuple[int, int] = (0, 1)) -> None:
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
        self._journal: list = []
        # With --redis, adbid.money.shared.SharedBudgets: it owns budget_micros (the leases).
        self.shared: SharedBudgets | None = None

    def pacing_view(self) -> tuple[np.ndarray, np.ndarray]:
        """(budget, committed spend) that pacing plans against: this process's books, or
        with shared budgets the global ones."""
        if self.shared is not None:
            return self.shared.pacing_view()
        return self.budget_micros, self.spent_micros + self.reserved_micros

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
        if self.shared is not None:
            self.shared.extend(campaigns)
        log.info("ledger: %d campaigns added by the new world", extra)

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

    def violations(self) -> list[str]:
        """Campaigns breaking spent + reserved <= budget (empty when the books are right)."""
        over = np.flatnonzero(self.spent_micros + self.reserved_micros > self.budget_micros)
        return [self.campaign_ids[c] for c in over]

"""The pacing controller alone: a simulated campaign whose spend follows its multiplier."""

from __future__ import annotations

import numpy as np

from adbid.money.ledger import SpendLedger
from adbid.money.pacing import DAY_S, PacingController, PacingGains
from adbid.world.campaigns import CampaignTable

DAY0 = 20_000 * DAY_S  # a UTC midnight


def controller(budget: int, mode: str = "even", **flight):
    table = CampaignTable.from_records([{"campaign_id": "c", "value_per_action_micros": 1,
                                         "budget_micros": budget, "pacing": mode, **flight}])
    ledger = SpendLedger(table, None)
    multipliers = np.ones(1)
    return ledger, multipliers, PacingController(table, ledger, multipliers, now_s=DAY0)


def run_day(ledger, multipliers, ctl, demand_per_s: float, hours: float = 24.0,
            step_s: int = 10) -> list[float]:
    """Spend `demand_per_s` x multiplier each second (what the campaign could buy at full
    value, scaled by pacing), never past the budget; returns the multiplier each hour."""
    seen = []
    for t in range(0, int(hours * 3600), step_s):
        ctl.update(DAY0 + t)
        room = int(ledger.budget_micros[0] - ledger.spent_micros[0])
        ledger.spent_micros[0] += min(int(demand_per_s * multipliers[0] * step_s), room)
        if t % 3600 == 0:
            seen.append(float(multipliers[0]))
    return seen


def test_an_even_campaign_with_too_much_demand_spreads_its_budget_over_the_day():
    budget = 86_400_000  # 1,000 micros a second is the even rate
    ledger, m, ctl = controller(budget)
    run_day(ledger, m, ctl, demand_per_s=10_000, hours=12)  # ten times the even rate
    spent = int(ledger.spent_micros[0])
    assert 0.40 * budget <= spent <= 0.60 * budget, spent / budget  # about half by noon
    assert 0.05 < m[0] < 0.3  # throttled near 1/10
    run_day(ledger, m, ctl, demand_per_s=10_000, hours=24)  # the rest of the day and on
    assert ledger.spent_micros[0] <= budget


def test_an_even_campaign_with_little_demand_bids_its_full_value():
    ledger, m, ctl = controller(86_400_000)
    seen = run_day(ledger, m, ctl, demand_per_s=500, hours=6)  # half the even rate
    assert seen[-1] == 1.0 and m[0] == 1.0


def test_asap_campaigns_are_never_throttled():
    ledger, m, ctl = controller(86_400_000, mode="asap")
    run_day(ledger, m, ctl, demand_per_s=10_000, hours=2)
    assert m[0] == 1.0


def test_a_spent_budget_drops_to_the_floor_and_a_new_day_plans_afresh():
    ledger, m, ctl = controller(3_600_000)
    ledger.spent_micros[0] = 3_600_000  # all spent at once
    ctl.update(DAY0 + 10)
    ctl.update(DAY0 + 20)
    assert m[0] == PacingGains().min_multiplier
    ledger.budget_micros[0] = 7_200_000  # a day later the budget grew: today's share plans
    ctl.update(DAY0 + DAY_S + 10)
    ctl.update(DAY0 + DAY_S + 20)
    assert int(ctl.planned_micros[0]) >= 3_600_000 and m[0] > PacingGains().min_multiplier


def test_a_flight_outside_now_is_not_throttled_and_plans_its_share():
    start, end = DAY0 + 3600, DAY0 + 7200
    _, m, ctl = controller(1_000_000, flight_start_unix_s=start, flight_end_unix_s=end)
    ctl.update(DAY0)
    ctl.update(DAY0 + 10)
    assert m[0] == 1.0 and ctl.planned_micros[0] == 0  # before the flight
    ctl.update(start + 1800)
    assert ctl.planned_micros[0] == 500_000  # half way through it

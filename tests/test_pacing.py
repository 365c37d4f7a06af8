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


def controller_with(budget: int, profile=None):
    table = CampaignTable.from_records([{"campaign_id": "c", "value_per_action_micros": 1,
                                         "budget_micros": budget, "pacing": "even"}])
    ledger = SpendLedger(table, None)
    multipliers = np.ones(1)
    return ledger, multipliers, PacingController(table, ledger, multipliers, now_s=DAY0,
                                                 profile=profile)


def spend_hours(ledger, m, ctl, demand_per_hour, step_s: int = 10,
                first_hour: int = 0) -> list[float]:
    """Hour first_hour + h: demand_per_hour[h] micros/s at full value, x the multiplier;
    returns the spend at each hour's end as a fraction of the budget."""
    budget = int(ledger.budget_micros[0])
    out = []
    for hour, demand in enumerate(demand_per_hour, start=first_hour):
        for t in range(hour * 3600, (hour + 1) * 3600, step_s):
            ctl.update(DAY0 + t)
            room = budget - int(ledger.spent_micros[0])
            ledger.spent_micros[0] += min(int(demand * m[0] * step_s), room)
        out.append(int(ledger.spent_micros[0]) / budget)
    return out


def test_a_campaign_ahead_of_its_plan_is_held_back_until_the_plan_catches_up():
    """Demand far above the plan in the first hour, then a spike at noon: after the first
    hour (the controller's integral takes minutes to wind down) spend stays near the even
    plan at every hour's end, and the budget is spent."""
    ledger, m, ctl = controller_with(86_400_000)  # even rate 1,000 micros/s
    demand = [50_000] + [3_000] * 11 + [60_000] + [3_000] * 11
    spent = spend_hours(ledger, m, ctl, demand)
    gaps = [round(s - (h + 1) / 24, 3) for h, s in enumerate(spent)]
    assert gaps[0] < 0.10 and max(abs(g) for g in gaps[1:]) < 0.035, gaps
    assert spent[-1] > 0.97


def test_no_traffic_then_traffic_bids_full_value_to_catch_up():
    ledger, m, ctl = controller_with(86_400_000)
    spent = spend_hours(ledger, m, ctl, [0] * 6 + [4_000])  # 6 quiet hours, then 4x
    assert spent[5] == 0
    assert m[0] == 1.0 and spent[6] < 7 / 24  # still behind its plan: not throttled
    spent += spend_hours(ledger, m, ctl, [4_000] * 3, first_hour=7)
    assert abs(spent[-1] - 10 / 24) < 0.035  # caught up, then held to the plan


def test_a_traffic_forecast_shapes_the_plan_and_the_spend():
    """All traffic forecast between 12:00 and 14:00: nothing is planned before noon, half
    by 13:00, all by 14:00. With a diurnal forecast and demand that follows it (3x the
    plan's rate at every hour), spend follows the plan hour by hour."""
    profile = [0.0] * 12 + [1.0, 1.0] + [0.0] * 10
    ledger, m, ctl = controller_with(7_200_000, profile)
    for hour, want in ((11, 0), (12, 0), (13, 3_600_000), (14, 7_200_000)):
        ctl.update(DAY0 + hour * 3600)
        assert abs(int(ctl.planned_micros[0]) - want) <= 1, (hour, ctl.planned_micros[0])
    diurnal = np.array([0.3, 0.2, 0.15, 0.15, 0.2, 0.35, 0.6, 0.9, 1.0, 1.0, 1.0, 1.05, 1.1,
                        1.05, 1.0, 1.0, 1.05, 1.15, 1.3, 1.4, 1.35, 1.1, 0.8, 0.5])
    share = diurnal / diurnal.sum()
    budget = 86_400_000
    ledger, m, ctl = controller_with(budget, diurnal.tolist())
    spent = spend_hours(ledger, m, ctl, (3 * budget * share / 3600).tolist())
    plan = np.cumsum(share)
    gaps = np.round(np.array(spent) - plan, 3)
    assert np.abs(gaps).max() < 0.05, gaps


def test_a_flat_forecast_plans_as_no_forecast_does():
    a = spend_hours(*controller_with(86_400_000), [3_000] * 6)
    b = spend_hours(*controller_with(86_400_000, [5.0] * 24), [3_000] * 6)
    assert a == b


def test_a_malformed_forecast_is_refused_with_what_is_wrong():
    import pytest

    from adbid.config import ServerConfig

    assert ServerConfig(pacing_profile="").pacing_weights() is None
    assert ServerConfig(pacing_profile=",".join(["2"] * 24)).pacing_weights() == [2.0] * 24
    for bad in ("1,2,3", "x," * 23 + "x", ",".join(["-1"] * 24), ",".join(["0"] * 24),
                ",".join(["inf"] * 24)):
        with pytest.raises(ValueError, match="pacing_profile"):
            ServerConfig(pacing_profile=bad)

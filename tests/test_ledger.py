import numpy as np

from adbid.campaigns import CampaignTable
from adbid.ledger import SpendLedger
from adbid.money import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb

WIN, LOSS, BILLING = pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING


def ledger(budget=1_000_000) -> SpendLedger:
    t = CampaignTable.from_records([
        {"campaign_id": "a", "value_per_action_micros": 1000, "budget_micros": budget},
        {"campaign_id": "b", "value_per_action_micros": 1000, "budget_micros": budget}])
    return SpendLedger(t, reservation_ttl_s=10)


def reserve(led: SpendLedger, rid: str, row: int, price: int, now: float = 0.0) -> None:
    # What the decision core does, then what the pipeline records.
    led.reserved_micros[row] += impression_cost_micros(price)
    led.record_bids([rid], np.array([row]), np.array([price]), now_s=now)


def test_win_settles_at_the_clearing_price():
    led = ledger()
    reserve(led, "r1", 0, 2_000_500)
    assert led.reserved_micros[0] == 2001
    r = led.apply("r1", WIN, 1_500_000)
    assert r.accepted and not r.duplicate
    assert led.reserved_micros[0] == 0 and led.spent_micros[0] == 1500


def test_loss_releases_and_duplicates_change_nothing():
    led = ledger()
    reserve(led, "r1", 1, 3_000_000)
    assert led.apply("r1", LOSS, 0).accepted
    assert led.reserved_micros[1] == 0 and led.spent_micros[1] == 0
    for outcome in (LOSS, WIN, BILLING):
        r = led.apply("r1", outcome, 1_000_000)
        assert r.accepted and r.duplicate
    assert led.spent_micros[1] == 0


def test_win_then_billing_is_counted_once():
    led = ledger()
    reserve(led, "r1", 0, 1_000_000)
    led.apply("r1", WIN, 900_000)
    assert led.apply("r1", BILLING, 900_000).duplicate
    assert led.spent_micros[0] == 900


def test_rejections_say_why():
    led = ledger()
    reserve(led, "r1", 0, 1_000_000)
    assert "no bid" in led.apply("nope", WIN, 1).error
    assert "above the bid" in led.apply("r1", WIN, 1_000_001).error
    assert "unknown outcome" in led.apply("r1", 0, 1).error
    assert "negative" in led.apply("r1", WIN, -5).error
    assert led.is_open("r1") and led.reserved_micros[0] == 1000


def test_expiry_releases_and_a_late_win_is_still_booked():
    led = ledger()
    reserve(led, "r1", 0, 1_000_000, now=0.0)
    reserve(led, "r2", 0, 1_000_000, now=5.0)
    assert led.expire(now_s=12.0) == 1
    assert led.reserved_micros[0] == 1000 and led.is_open("r2")
    r = led.apply("r1", WIN, 800_000)
    assert r.accepted and not r.duplicate and led.late_wins == 1
    assert led.spent_micros[0] == 800
    assert led.apply("r1", WIN, 800_000).duplicate and led.spent_micros[0] == 800


def test_invariant_check_names_overspent_campaigns():
    led = ledger(budget=1000)
    assert led.violations() == []
    led.spent_micros[1] = 1001
    assert led.violations() == ["b"]

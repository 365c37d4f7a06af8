import asyncio

import numpy as np
import pytest

from adbid.campaigns import CampaignTable
from adbid.ledger import LedgerError, SpendLedger
from adbid.ledger_store import LedgerStore
from adbid.money import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb

WIN, LOSS, BILLING = pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING


def table(budget=1_000_000) -> CampaignTable:
    return CampaignTable.from_records([
        {"campaign_id": "a", "value_per_action_micros": 1000, "budget_micros": budget},
        {"campaign_id": "b", "value_per_action_micros": 1000, "budget_micros": budget}])


def ledger(budget=1_000_000, store=None) -> SpendLedger:
    return SpendLedger(table(budget), store, reservation_ttl_s=10)


def reserve(led: SpendLedger, rid: str, row: int, price: int, now_ms: int = 0) -> None:
    # What the decision core does, then what the pipeline records.
    led.reserved_micros[row] += impression_cost_micros(price)
    led.record_bids([rid], np.array([row]), np.array([price]), np.array([11], np.uint64),
                    now_unix_ms=now_ms)


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
    r = led.apply("r1", LOSS, 0)
    assert r.accepted and r.released is not None and r.released.user_key == 11
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
    assert led.knows("r1") and led.reserved_micros[0] == 1000


def test_expiry_releases_and_a_late_win_is_still_booked(tmp_path):
    async def go():
        led = ledger(store=LedgerStore(tmp_path / "l.sqlite"))
        reserve(led, "r1", 0, 1_000_000, now_ms=0)
        reserve(led, "r2", 0, 1_000_000, now_ms=5_000)
        assert len(led.expire(now_unix_ms=12_000)) == 1
        await led.flush()
        assert led.reserved_micros[0] == 1000 and "r2" in led.open
        assert led.needs_store_lookup("r1", WIN)
        r = led.apply("r1", WIN, 800_000, stored=await led.find_stored("r1"))
        assert r.accepted and not r.duplicate and led.late_wins == 1
        assert led.spent_micros[0] == 800
        assert led.apply("r1", WIN, 800_000).duplicate and led.spent_micros[0] == 800
        await led.flush()
        led.close()
    asyncio.run(go())


def test_books_survive_a_restart_exactly(tmp_path):
    path = tmp_path / "ledger.sqlite"

    async def first():
        led = ledger(store=LedgerStore(path))
        for i in range(5):
            reserve(led, f"r{i}", i % 2, 1_000_000 + i, now_ms=10**12)
        led.apply("r0", WIN, 700_000)
        led.apply("r1", LOSS, 0)
        led.update_campaign("b", 2_000_000, False, "test")
        await led.flush()
        reserve(led, "unflushed", 0, 5_000_000, now_ms=10**12)  # never acknowledged
        return led.spent_micros.copy(), led.reserved_micros.copy()

    spent, reserved = asyncio.run(first())
    led = ledger(store=LedgerStore(path))
    assert led.spent_micros.tolist() == spent.tolist() == [700, 0]
    # The unflushed reservation is gone; everything acknowledged is back.
    assert led.reserved_micros.tolist() == [reserved[0] - 5000, reserved[1]]
    assert set(led.open) == {"r2", "r3", "r4"}
    assert led.budget_micros[1] == 2_000_000 and led.active[1] == 0
    assert led.apply("r0", WIN, 700_000).duplicate  # idempotent across the restart
    assert led.store.totals()["a"]["spent"] == 700
    led.close()


def test_campaign_updates_are_validated():
    led = ledger(budget=10_000)
    reserve(led, "r1", 0, 5_000_000)  # 5000 micros reserved
    with pytest.raises(LedgerError, match="below"):
        led.update_campaign("a", 4_999, None, "too low")
    with pytest.raises(KeyError):
        led.update_campaign("zzz", 1, None, "")
    led.update_campaign("a", 5_000, False, "ok")
    assert led.budget_micros[0] == 5_000 and led.active[0] == 0


def test_invariant_check_names_overspent_campaigns():
    led = ledger(budget=1000)
    assert led.violations() == []
    led.spent_micros[1] = 1001
    assert led.violations() == ["b"]

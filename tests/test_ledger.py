import asyncio

import numpy as np
import pytest

from adbid.money import journal as ledger_log
from adbid.money.journal import LedgerLog
from adbid.money.ledger import LedgerError, SpendLedger
from adbid.money.units import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

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


def test_expiry_releases_and_a_late_win_is_still_booked():
    led = ledger()
    reserve(led, "r1", 0, 1_000_000, now_ms=0)
    reserve(led, "r2", 0, 1_000_000, now_ms=5_000)
    assert len(led.expire(now_unix_ms=12_000)) == 1
    assert led.reserved_micros[0] == 1000 and "r2" in led.open
    r = led.apply("r1", WIN, 800_000)
    assert r.accepted and not r.duplicate and led.late_wins == 1
    assert led.spent_micros[0] == 800
    assert led.apply("r1", WIN, 800_000).duplicate and led.spent_micros[0] == 800
    assert led.apply("r1", LOSS, 0).duplicate


def run_session(path, steps, sync="write"):
    """Open the ledger at `path`, run steps(led), flush, return the books (then close)."""
    async def go():
        led = ledger(store=LedgerLog(path, sync))
        steps(led)
        await led.flush()
        books = (led.spent_micros.tolist(), led.reserved_micros.tolist(), sorted(led.open),
                 led.budget_micros.tolist(), led.active.tolist())
        led.close()
        return books
    return asyncio.run(go())


def books_of(path):
    led = ledger(store=LedgerLog(path, "write"))
    out = (led.spent_micros.tolist(), led.reserved_micros.tolist(), sorted(led.open),
           led.budget_micros.tolist(), led.active.tolist())
    led.close()
    return out, led


def test_books_survive_a_restart_exactly(tmp_path):
    path = tmp_path / "ledger"

    def steps(led):
        for i in range(5):
            reserve(led, f"r{i}", i % 2, 1_000_000 + i, now_ms=10**13)
        led.apply("r0", WIN, 700_000)
        led.apply("r1", LOSS, 0)
        led.update_campaign("b", 2_000_000, False, "test")

    before = run_session(path, steps, sync="fsync")
    after, led = books_of(path)
    assert after == before
    assert before[0] == [700, 0] and set(before[2]) == {"r2", "r3", "r4"}
    assert before[3][1] == 2_000_000 and before[4][1] == 0
    assert led.apply("r0", WIN, 700_000).duplicate  # idempotent across the restart
    assert ledger_log.totals(path)["a"]["spent"] == 700


def test_unflushed_records_are_not_in_the_books_after_a_restart(tmp_path):
    path = tmp_path / "ledger"
    run_session(path, lambda led: reserve(led, "acked", 0, 1_000_000, now_ms=10**13))

    async def crash_before_flush():
        led = ledger(store=LedgerLog(path, "write"))
        reserve(led, "never-acked", 0, 5_000_000, now_ms=10**13)
        led.store.close()  # "killed": the journal was never flushed
    asyncio.run(crash_before_flush())
    (_, reserved, open_, _, _), _ = books_of(path)
    assert open_ == ["acked"] and reserved == [1000, 0]


def test_a_torn_tail_is_cut_off_and_the_rest_replays(tmp_path):
    path = tmp_path / "ledger"
    run_session(path, lambda led: [reserve(led, f"r{i}", 0, 1_000_000, now_ms=10**13)
                                   for i in range(3)])
    seg = LedgerLog(path).segments()[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole + whole[:25])  # half a record, as a crash mid-write leaves it
    (_, reserved, open_, _, _), _ = books_of(path)
    assert open_ == ["r0", "r1", "r2"] and reserved[0] == 3000
    assert seg.read_bytes() == whole  # truncated back to the last whole record
    seg.write_bytes(whole[:-3])  # a record with a bad length/CRC at the end
    (_, reserved, open_, _, _), _ = books_of(path)
    assert open_ == ["r0", "r1"]


def test_compaction_keeps_the_books_and_forgets_nothing_it_needs(tmp_path):
    path = tmp_path / "ledger"

    async def go():
        led = ledger(store=LedgerLog(path, "write"))
        led.store.segment_bytes = 2_000  # compact soon
        for i in range(40):
            reserve(led, f"r{i}", i % 2, 1_000_000 + i, now_ms=10**13)
            if i % 3 == 0:
                led.apply(f"r{i}", WIN, 500_000)
            elif i % 3 == 1:
                led.apply(f"r{i}", LOSS, 0)
            await led.flush()
            led.compact_if_needed()
        led.update_campaign("a", 900_000, None, "after compaction")
        await led.flush()
        books = (led.spent_micros.tolist(), led.reserved_micros.tolist(), sorted(led.open),
                 led.budget_micros.tolist(), led.active.tolist())
        led.close()
        return books

    before = asyncio.run(go())
    assert len(LedgerLog(path).segments()) == 1
    after, led = books_of(path)
    assert after == before
    assert led.apply("r0", WIN, 500_000).duplicate  # closed ids survive compaction
    t = ledger_log.totals(path)
    assert [t[c]["spent"] for c in ("a", "b")] == before[0]


def test_a_compaction_cut_off_before_removing_the_old_segment_counts_nothing_twice(tmp_path):
    """The snapshot is in place but the process died before deleting the segment it
    replaces: replay starts from the snapshot, and start-up deletes the leftover."""
    path = tmp_path / "ledger"

    async def go():
        led = ledger(store=LedgerLog(path, "write"))
        for i in range(10):
            reserve(led, f"r{i}", i % 2, 1_000_000 + i, now_ms=10**13)
            if i % 2 == 0:
                led.apply(f"r{i}", WIN, 500_000)
        await led.flush()
        old = {seg.name: seg.read_bytes() for seg in led.store.segments()}
        led.store.segment_bytes = 1  # compact now
        await asyncio.wrap_future(led.compact_if_needed())
        books = (led.spent_micros.tolist(), led.reserved_micros.tolist(), sorted(led.open),
                 led.budget_micros.tolist(), led.active.tolist())
        led.close()
        return books, old

    before, old = asyncio.run(go())
    assert before[0] != [0, 0]
    for name, data in old.items():  # as if the process died before deleting them
        (path / name).write_bytes(data)
    assert len(LedgerLog(path).segments()) == 2
    t = ledger_log.totals(path)
    assert [t[c]["spent"] for c in ("a", "b")] == before[0]
    after, _ = books_of(path)
    assert after == before
    assert len(LedgerLog(path).segments()) == 1


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


def test_a_batch_of_reservations_round_trips_through_the_log(tmp_path):
    from adbid.money.records import Reserve, ReserveBatch

    batch = ReserveBatch(["r1", "日本-2", ""], ["a", "b", "a"], [-5, 2**62, 0], [1, 2, 3],
                         [4, 5, 6], 10, 20)
    log = LedgerLog(tmp_path / "l", "write")
    log.open()
    log.append([batch, ReserveBatch([], [], [], [], [], 1, 2)]).result()
    log.close()
    assert list(LedgerLog(tmp_path / "l").replay()) == [
        Reserve("r1", "a", -5, 1, 4, 10, 20), Reserve("日本-2", "b", 2**62, 2, 5, 10, 20),
        Reserve("", "a", 0, 3, 6, 10, 20)]


def test_worker_slices_add_up_and_budget_changes_book_the_slice():
    budget = 1_000_003
    slices = [SpendLedger(table(budget), None, share=(i, 3)) for i in range(3)]
    assert [int(s.budget_micros[0]) for s in slices] == [333_335, 333_334, 333_334]
    assert sum(int(s.budget_micros[1]) for s in slices) == budget
    # An operator gives the whole budget; each worker books its slice of it.
    for s in slices:
        s.update_campaign("a", 600_000, None, "raise")
    assert [int(s.budget_micros[0]) for s in slices] == [200_000] * 3
    reserve(slices[1], "r1", 0, 150_000_000)  # 150,000 micros reserved in worker 1's slice
    with pytest.raises(LedgerError, match="worker 1's slice of 1/3"):
        slices[1].update_campaign("a", 300_000, None, "cut")  # a 100,000 slice < 150,000
    with pytest.raises(ValueError):
        SpendLedger(table(), None, share=(3, 3))


def test_a_snapshot_larger_than_the_threshold_is_not_rewritten_back_to_back(tmp_path):
    """Many open reservations make a snapshot bigger than segment_bytes; compacting again
    at once would rewrite it forever (a loop that starved a loaded server). The next
    compaction waits until the log has doubled."""

    async def go():
        led = ledger(budget=10**12, store=LedgerLog(tmp_path / "ledger", "write"))
        led.store.segment_bytes = 1_000
        for i in range(200):  # open reservations only: all of them go into the snapshot
            reserve(led, f"r{i}", i % 2, 1_000_000, now_ms=10**13)
        await led.flush()
        compaction = led.compact_if_needed()
        assert compaction
        assert not led.compact_if_needed()  # one is under way already
        await asyncio.wrap_future(compaction)
        snapshot = led.store.compacted_bytes
        assert snapshot > led.store.segment_bytes and not led.store.compacting
        assert not led.compact_if_needed()  # no growth since: no second rewrite
        i = 200
        while led.store.segment_size() < 2 * snapshot:
            reserve(led, f"r{i}", 0, 1_000_000, now_ms=10**13)
            i += 1
            await led.flush()
        compaction = led.compact_if_needed()
        assert compaction
        await asyncio.wrap_future(compaction)
        led.close()

    asyncio.run(go())


def test_a_reserve_batch_round_trips_ascii_and_other_ids():
    """The batch record joins ids into one string when they are ASCII and encodes each one
    otherwise; both must read back exactly."""
    from adbid.money.records import _HEAD, Reserve, ReserveBatch

    for ids in (["r-1", "r-22", ""], ["é-1", "r-2", "漢字"]):
        rb = ReserveBatch(ids, ["c1", "cé", "c3"], [1, -2, 3], [10, 20, 30], [1, 1, 1], 5, 9)
        back = list(ReserveBatch.expand(rb.encode()[_HEAD.size:]))
        assert back == [Reserve(r, c, u, p, k, 5, 9) for r, c, u, p, k in
                        zip(ids, ["c1", "cé", "c3"], [1, -2, 3], [10, 20, 30], [1, 1, 1])]


def test_appends_go_on_during_a_compaction_and_land_behind_the_snapshot(tmp_path):
    """In "write" mode an append that finds the writer thread idle is written on the spot
    (its future is done on return). A compaction writes its snapshot on a thread of its
    own: appends made meanwhile are durable at once, not held until it ends, and the
    switch copies them behind the snapshot (the older segment is dropped)."""
    import threading

    from adbid.money.records import Spent

    log = LedgerLog(tmp_path / "l", "write")
    log.open()
    first = log.append([Spent("a", 1)])
    assert first.done() and first.exception() is None  # the writer was idle
    gate = threading.Event()

    def snapshot():  # consumed on the compaction's thread, held there until the gate opens
        gate.wait(10)
        yield Spent("s", 2)

    compaction = log.compact(snapshot())
    during = log.append([Spent("b", 3)])
    assert during.result(2) is None and not compaction.done()
    gate.set()
    compaction.result(10)
    after = log.append([Spent("c", 4)])
    assert after.result(2) is None
    log.close()
    assert [r.campaign_id for r in LedgerLog(tmp_path / "l").replay()] == ["s", "b", "c"]
    assert len(LedgerLog(tmp_path / "l").segments()) == 1


def test_a_longer_hold_outlives_the_ttl_and_shorter_ones_still_expire(tmp_path):
    """Bids held longer (an OpenRTB imp's exp) expire at their own time; bids recorded
    after them with the default window are not held back behind them; replay keeps both."""
    store = LedgerLog(tmp_path / "l", "write")
    led = ledger(store=store)  # TTL 10 s
    for rid, hold in (("long", 60_000), ("short", 0)):
        led.reserved_micros[0] += impression_cost_micros(1_000_000)
        led.record_bids([rid], np.array([0]), np.array([1_000_000]),
                        np.array([11], np.uint64), now_unix_ms=0,
                        hold_ms=np.array([hold], np.int64))
    asyncio.run(led.flush())
    assert [r.campaign_row for r in led.expire(10_000)] == [0]  # "short", at its TTL
    assert set(led.open) == {"long"}
    asyncio.run(led.flush())
    led.close()
    again = ledger(store=LedgerLog(tmp_path / "l", "write"))
    assert set(again.open) == {"long"} and again.expire(59_999) == []
    assert len(again.expire(60_000)) == 1 and not again.open
    assert again.reserved_micros[0] == 0
    again.close()

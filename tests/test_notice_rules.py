"""Notices and expiry, as the contract states them: billing corrects a win's price,
duplicates say when they disagree, a refused price leaves the reservation open, an
expired reservation gives back its frequency count but stays in doubt (its money
reserved) for the late-win window, so late wins cannot overspend."""

from __future__ import annotations

import time

import grpc
import numpy as np

from adbid.money import journal
from adbid.money.ledger import SpendLedger
from adbid.money.units import impression_cost_micros
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable
from adbid.world.demo_traffic import make_events

WIN, LOSS, BILLING = pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS, pb.OUTCOME_TYPE_BILLING


def ledger(store=None, window_s=0.0) -> SpendLedger:
    table = CampaignTable.from_records([{"campaign_id": "a", "value_per_action_micros": 1000,
                                         "budget_micros": 1_000_000}])
    return SpendLedger(table, store, reservation_ttl_s=10, late_win_window_s=window_s)


def reserve(led: SpendLedger, rid: str, price: int, now_ms: int = 0) -> None:
    led.reserved_micros[0] += impression_cost_micros(price)
    led.record_bids([rid], np.array([0]), np.array([price]), np.array([11], np.uint64),
                    now_unix_ms=now_ms)


def test_billing_after_a_win_corrects_the_price_and_duplicates_say_when_they_disagree(
        tmp_path):
    led = ledger(journal.open_log(tmp_path))
    reserve(led, "r", 2_000_000)
    assert led.apply("r", WIN, 1_500_000).accepted and led.spent_micros[0] == 1500
    again = led.apply("r", WIN, 1_200_000)  # a second WIN at another price
    assert again.accepted and again.duplicate and "already settled at 1500000" in again.error
    billed = led.apply("r", BILLING, 1_800_000)  # billing is what the exchange charges
    assert billed.accepted and not billed.duplicate and led.spent_micros[0] == 1800
    assert led.apply("r", BILLING, 1_800_000).duplicate  # the same billing again: silent
    late = led.apply("r", BILLING, 1_000_000)
    assert late.duplicate and "already settled" in late.error and led.spent_micros[0] == 1800
    assert "changes nothing" in led.apply("r", LOSS, 0).error
    asyncio_flush(led)
    led.close()
    assert ledger(journal.open_log(tmp_path)).spent_micros[0] == 1800  # replayed the same
    assert journal.totals(tmp_path)["a"]["spent"] == 1800


def asyncio_flush(led: SpendLedger) -> None:
    import asyncio

    asyncio.run(led.flush())


def test_a_refused_price_leaves_the_reservation_open_and_zero_settles_at_the_bid():
    led = ledger()
    reserve(led, "r", 1_000_000)
    refused = led.apply("r", WIN, 1_000_001)
    assert not refused.accepted and "above the bid" in refused.error
    assert "r" in led.open and led.reserved_micros[0] == 1000  # still held: can be corrected
    assert led.apply("r", WIN, 900_000).accepted and led.spent_micros[0] == 900
    reserve(led, "z", 1_000_000)
    assert led.apply("z", BILLING, 0).accepted and led.spent_micros[0] == 900 + 1000
    assert led.apply("z", WIN, 0).duplicate and not led.apply("z", WIN, 0).error


def test_a_win_after_a_loss_is_a_duplicate_that_says_so():
    led = ledger()
    reserve(led, "r", 1_000_000)
    led.apply("r", LOSS, 0)
    r = led.apply("r", WIN, 500_000)
    assert r.accepted and r.duplicate and "LOSS" in r.error and led.spent_micros[0] == 0


def test_an_expired_reservation_stays_in_doubt_then_is_released(tmp_path):
    led = ledger(journal.open_log(tmp_path), window_s=60)
    reserve(led, "r", 1_000_000, now_ms=0)
    reserve(led, "s", 1_000_000, now_ms=0)
    expired = led.expire(now_unix_ms=10_000)
    assert sorted(r.user_key for r in expired) == [11, 11]  # their frequency counts go back
    assert led.reserved_micros[0] == 2000 and set(led.doubt) == {"r", "s"}
    assert led.knows("r") and not led.open
    assert led.apply("r", WIN, 700_000).accepted and led.late_wins == 1
    assert led.reserved_micros[0] == 1000 and led.spent_micros[0] == 700
    asyncio_flush(led)
    led.close()
    again = ledger(journal.open_log(tmp_path), window_s=60)  # the doubt survives a restart
    assert set(again.doubt) == {"s"} and again.reserved_micros[0] == 1000
    assert again.expire(now_unix_ms=69_999) == [] and again.reserved_micros[0] == 1000
    again.expire(now_unix_ms=70_000)
    assert not again.doubt and again.reserved_micros[0] == 0 and again.spent_micros[0] == 700
    assert again.apply("s", WIN, 100_000).accepted and again.late_wins == 1  # still booked


def bid(ch, events, batch_id="b"):
    return bidder_pb2_grpc.BidderStub(ch).Bid(pb.BidRequest(batch_id=batch_id, events=events),
                                              timeout=10)


def campaign(ch, cid):
    status = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)
    return {c.campaign_id: c for c in status.campaigns}[cid]


def wait_for(predicate, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_late_wins_cannot_overspend_a_small_budget(server_factory):
    """The audit's sequence: bids expire without a notice, new bids come, then the late
    wins for the first bids arrive. Their money stayed reserved in doubt, so the new bids
    could not take it, and every late win fits the budget."""
    s = server_factory(reservation_ttl_s=0.5, late_win_window_s=60)
    with grpc.insecure_channel(s.target) as ch:
        first = [d for d in bid(ch, make_events(256, np.random.default_rng(31))).decisions
                 if d.bid]
        cid = max({d.campaign_id for d in first}, key=lambda c: sum(
            d.campaign_id == c for d in first))
        mine = [d for d in first if d.campaign_id == cid]
        c = campaign(ch, cid)
        budget = c.spent_micros + c.reserved_micros  # exactly what its open bids hold
        admin_pb2_grpc.AdminStub(ch).UpdateCampaign(admin_pb2.UpdateCampaignRequest(
            campaign_id=cid, budget_micros=budget, reason="audit"), timeout=5)
        assert wait_for(lambda: s.server.ledger.expired >= len(first))
        assert campaign(ch, cid).reserved_micros == budget  # in doubt, still held
        status = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)
        assert status.in_doubt_reservations == len(first)
        for seed in range(32, 36):  # new bids: none may take the money in doubt
            again = bid(ch, make_events(256, np.random.default_rng(seed),
                                        id_prefix=f"new{seed}-"), batch_id=f"n{seed}")
            assert not any(d.bid and d.campaign_id == cid for d in again.decisions)
        wins = [pb.Outcome(request_id=d.request_id, type=WIN,
                           clearing_price_cpm_micros=d.price_cpm_micros) for d in mine]
        results = bidder_pb2_grpc.BidderStub(ch).ReportOutcomes(
            pb.ReportOutcomesRequest(outcomes=wins), timeout=5).results
        assert all(r.accepted and not r.duplicate for r in results)
        c = campaign(ch, cid)
        assert c.spent_micros == budget and c.reserved_micros == 0
        assert c.spent_micros <= c.budget_micros


def test_an_expired_bid_gives_its_frequency_count_back(server_factory):
    s = server_factory(reservation_ttl_s=0.5, late_win_window_s=60)
    core = s.server.pipeline.core
    capped = {core.campaigns.ids[c] for c in np.flatnonzero(core.campaigns.freq_cap > 0)}
    events = make_events(300, np.random.default_rng(24), n_users=2_000)
    for e in events:
        e.user_id = "u0000042"
    with grpc.insecure_channel(s.target) as ch:
        def capped_bids(prefix: str) -> int:
            for e, i in zip(events, range(len(events))):
                e.request_id = f"{prefix}{i}"
            return sum(d.bid and d.campaign_id in capped
                       for d in bid(ch, events, batch_id=prefix).decisions)

        assert capped_bids("a") > 0
        assert capped_bids("b") == 0  # the user is at every cap
        assert wait_for(lambda: s.server.ledger.expired > 0 and not s.server.ledger.open)
        assert capped_bids("c") > 0  # expired bids never won: the counts came back


def test_notices_keep_what_the_market_said(server_factory):
    """Loss notices' minimum to win and reason, and wins' clearing prices, are kept with
    the bid (market feedback for shading), once per bid: from ReportOutcomes and from the
    OpenRTB lurl alike."""
    import json
    import urllib.request

    s = server_factory()
    feedback = s.server.ledger.feedback
    with grpc.insecure_channel(s.target) as ch:
        bids = [d for d in bid(ch, make_events(128, np.random.default_rng(51))).decisions
                if d.bid]
        won, lost = bids[0], bids[1]
        notices = [pb.Outcome(request_id=lost.request_id, type=LOSS,
                              min_to_win_cpm_micros=lost.price_cpm_micros + 250_000,
                              loss_reason=102),
                   pb.Outcome(request_id=won.request_id, type=WIN,
                              clearing_price_cpm_micros=won.price_cpm_micros - 1),
                   pb.Outcome(request_id=lost.request_id, type=LOSS,
                              min_to_win_cpm_micros=1, loss_reason=7)]  # a duplicate
        bidder_pb2_grpc.BidderStub(ch).ReportOutcomes(
            pb.ReportOutcomesRequest(outcomes=notices), timeout=5)
    assert len(feedback.recent) == 2
    loss, win = feedback.recent
    assert (loss.won, loss.bid_cpm_micros, loss.price_cpm_micros, loss.loss_reason) == (
        False, lost.price_cpm_micros, lost.price_cpm_micros + 250_000, 102)
    assert (win.won, win.price_cpm_micros) == (True, won.price_cpm_micros - 1)
    # The same through an OpenRTB bid's lurl, its macros filled as an exchange would.
    request = {"id": "fb-1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250},
                                      "bidfloor": 0.01}],
               "site": {"domain": "news.example", "keywords": "football soccer"},
               "device": {"devicetype": 2, "geo": {"country": "USA"}},
               "user": {"buyeruid": "u0000042"}}
    base = f"http://127.0.0.1:{s.server.openrtb_port}"
    post = urllib.request.Request(f"{base}/openrtb2/bid", json.dumps(request).encode(),
                                  {"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=10) as r:
        b = json.loads(r.read())["seatbid"][0]["bid"][0]
    lurl = (b["lurl"].replace("${AUCTION_CURRENCY}", "USD").replace("${AUCTION_LOSS}", "102")
            .replace("${AUCTION_MIN_TO_WIN}", "1.5"))
    with urllib.request.urlopen(lurl, timeout=10) as r:
        assert r.status == 204
    last = feedback.recent[-1]
    assert (last.won, last.price_cpm_micros, last.loss_reason) == (False, 1_500_000, 102)
    assert feedback.campaigns[last.campaign_row].losses_with_min_to_win >= 1

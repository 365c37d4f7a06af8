"""The client contract, item by item: what a bid means, what a no-bid says, how test
traffic, auction types and category blocks behave. Real servers on 127.0.0.1:0 where the
behaviour is the server's; the compiled core with real campaign tables where it is the
core's."""

from __future__ import annotations

import grpc
import numpy as np

from adbid import metrics
from adbid.edge.decode import decode_request
from adbid.money.ledger import SpendLedger
from adbid.stages.decision import DecisionCore
from adbid.stages.lookup import resolve
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable
from adbid.world.demo_traffic import make_events


def bid(channel, events, batch_id="b", **kw) -> pb.BidResponse:
    return bidder_pb2_grpc.BidderStub(channel).Bid(
        pb.BidRequest(batch_id=batch_id, events=events, **kw), timeout=10)


def events(n, seed=0, **kw):
    return make_events(n, np.random.default_rng(seed), n_users=2_000, **kw)


# -- no-bids say what they mean ---------------------------------------------------------

def test_a_no_bid_value_and_score_describe_the_same_rejected_candidate(channel):
    evs = events(256, seed=3)
    for e in evs:
        e.floor_cpm_micros = 10**12  # above every value: each best candidate is rejected
    resp = bid(channel, evs)
    below = [d for d in resp.decisions if d.no_bid_reason == pb.NO_BID_REASON_BELOW_FLOOR]
    assert below, "a floor above every value gives BELOW_FLOOR no-bids"
    for d in below:
        assert d.value_cpm_micros > 0 and 0 < d.score <= 1, d
    for d in resp.decisions:
        assert (d.value_cpm_micros == 0) == (d.score == 0), d
    # Both empty when there is no candidate at all.
    shed = [d for d in resp.decisions if d.no_bid_reason == pb.NO_BID_REASON_NO_CANDIDATES]
    assert all(d.value_cpm_micros == 0 and d.score == 0 for d in shed)


# -- test traffic -----------------------------------------------------------------------

def _labelled(counter, traffic: str) -> float:
    return counter.labels(traffic)._value.get()


def test_test_traffic_is_counted_apart_and_respects_budgets(server_factory):
    s = server_factory()
    with grpc.insecure_channel(s.target) as ch:
        live_before = _labelled(metrics.EVENTS, "live")
        test_before = _labelled(metrics.EVENTS, "test")
        resp = bid(ch, events(64, seed=4, test=True))
        assert any(d.bid for d in resp.decisions)
        assert _labelled(metrics.EVENTS, "test") - test_before == 64
        assert _labelled(metrics.EVENTS, "live") == live_before
        admin = admin_pb2_grpc.AdminStub(ch)
        for c in admin.Status(admin_pb2.StatusRequest(), timeout=5).campaigns:
            admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(
                campaign_id=c.campaign_id, budget_micros=c.spent_micros + c.reserved_micros,
                reason="exhaust"), timeout=5)
        resp = bid(ch, events(64, seed=4, test=True), batch_id="after")
        assert not any(d.bid for d in resp.decisions)
        assert any(d.no_bid_reason == pb.NO_BID_REASON_BUDGET_EXHAUSTED
                   for d in resp.decisions)


# -- AUCTION_TYPE_UNSPECIFIED -----------------------------------------------------------

def test_unspecified_auction_is_second_price_by_default_and_a_setting_can_make_it_first(
        server_factory):
    evs = events(128, seed=6, test=True)
    for e in evs:
        e.auction_type = pb.AUCTION_TYPE_UNSPECIFIED
    answers = {}
    for mode in ("second", "first"):
        s = server_factory(unspecified_auction=mode, shading=0.5)
        with grpc.insecure_channel(s.target) as ch:
            answers[mode] = bid(ch, evs).decisions
    second = [d for d in answers["second"] if d.bid]
    assert second and all(d.price_cpm_micros == d.value_cpm_micros for d in second)
    first = {d.request_id: d for d in answers["first"] if d.bid}
    shaded = [d for d in first.values() if d.price_cpm_micros < d.value_cpm_micros]
    assert shaded, "with --unspecified-auction first, unspecified auctions are shaded"


# -- category blocks at the level given -------------------------------------------------

def _core_for(categories: list[list[str]]) -> tuple[CampaignTable, DecisionCore]:
    table = CampaignTable.from_records([
        {"campaign_id": f"c{i}", "value_per_action_micros": 4_000, "budget_micros": 10**9,
         "categories": cats} for i, cats in enumerate(categories)])
    ledger = SpendLedger(table, None)
    return table, DecisionCore(table, np.arange(len(table), dtype=np.int32), ledger, 1.0)


def _bidders(table, core, bcat: list[str]) -> set[str]:
    """Campaigns that bid, one event per campaign (each event's one candidate is it)."""
    n = len(table)
    request = pb.BidRequest(events=[pb.AdEvent(request_id=f"r{i}", blocked_categories=bcat,
                                               test=True) for i in range(n)])
    batch = decode_request(request)
    resolve(batch, table)
    dec = core.decide(batch, np.arange(n, dtype=np.int64)[:, None],
                      np.full((n, 1), 0.5, np.float32))
    return {table.ids[i] for i in np.flatnonzero(dec.bid).tolist()}


def test_category_blocks_match_at_the_level_given():
    table, core = _core_for([["IAB7"], ["IAB7-39"], ["IAB7-40"], ["IAB8"], ["IAB7-39", "IAB8"]])
    every = set(table.ids)
    # A subcategory block blocks that subcategory only, not its parent nor its siblings.
    assert _bidders(table, core, ["IAB7-39"]) == every - {"c1", "c4"}
    # A tier-1 block blocks the category and all of its subcategories.
    assert _bidders(table, core, ["IAB7"]) == {"c3"}
    assert _bidders(table, core, ["iab8"]) == {"c0", "c1", "c2"}
    # Unknown codes and subcategories no campaign carries block nothing.
    assert _bidders(table, core, ["IAB7-41", "IAB99", "x"]) == every


# -- retries ----------------------------------------------------------------------------

def _reserved(channel) -> int:
    status = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)
    return sum(c.reserved_micros for c in status.campaigns)


def _answer(d: pb.BidDecision) -> tuple:
    return (d.request_id, d.bid, d.price_cpm_micros, d.campaign_id, d.creative_id,
            round(d.score, 6), d.value_cpm_micros, d.no_bid_reason)


def test_a_retried_batch_gets_the_same_bids_and_reserves_nothing_twice(channel):
    evs = events(128, seed=21)
    for e in evs[:8]:  # the columns below carry no block lists
        del e.blocked_categories[:], e.blocked_advertiser_domains[:]
    first = bid(channel, evs, batch_id="try-1")
    bids = [d for d in first.decisions if d.bid]
    assert bids
    reserved = _reserved(channel)
    again = bid(channel, evs, batch_id="try-2")
    for d1, d2 in zip(first.decisions, again.decisions):
        if d1.bid:
            assert _answer(d1) == _answer(d2)
    assert _reserved(channel) == reserved  # nothing reserved twice
    # Also as columns, the other wire form.
    cols = pb.EventColumns(request_id=[e.request_id for e in evs[:8]],
                           user_id=[e.user_id for e in evs[:8]],
                           context_text=[e.context_text for e in evs[:8]],
                           floor_cpm_micros=[e.floor_cpm_micros for e in evs[:8]],
                           country=[e.country for e in evs[:8]],
                           device_type=[e.device_type for e in evs[:8]],
                           slot_width_px=[e.slot_width_px for e in evs[:8]],
                           slot_height_px=[e.slot_height_px for e in evs[:8]],
                           site_domain=[e.site_domain for e in evs[:8]],
                           auction_type=[e.auction_type for e in evs[:8]])
    col = bid(channel, [], batch_id="try-3", columns=cols).columns
    for i, d1 in enumerate(first.decisions[:8]):
        assert col.bid[i] == d1.bid
        if d1.bid:
            assert (col.price_cpm_micros[i], col.campaign_id[i]) == (d1.price_cpm_micros,
                                                                     d1.campaign_id)
    assert _reserved(channel) == reserved


def test_a_reused_id_with_other_content_or_after_its_notice_is_refused_with_the_reason(
        channel):
    evs = events(64, seed=22)
    first = [d for d in bid(channel, evs).decisions if d.bid]
    changed = next(e for e in evs if e.request_id == first[0].request_id)
    changed.floor_cpm_micros += 1
    d = bid(channel, [changed], batch_id="changed").decisions[0]
    assert d.no_bid_reason == pb.NO_BID_REASON_INVALID_EVENT and "different content" in d.error
    lost = next(e for e in evs if e.request_id == first[1].request_id)
    bidder_pb2_grpc.BidderStub(channel).ReportOutcomes(pb.ReportOutcomesRequest(outcomes=[
        pb.Outcome(request_id=lost.request_id, type=pb.OUTCOME_TYPE_LOSS)]), timeout=5)
    d = bid(channel, [lost], batch_id="after-loss").decisions[0]
    assert d.no_bid_reason == pb.NO_BID_REASON_INVALID_EVENT and "closed" in d.error


# -- deadlines and unparseable stream messages ------------------------------------------

def test_shed_answers_carry_their_server_latency(server_factory):
    s = server_factory(send_margin_ms=0.0)
    keeper = s.server.keeper
    n = 2048
    with grpc.insecure_channel(s.target) as ch:
        bid(ch, events(n, seed=40, test=True), batch_id="warm")
        low = keeper.costs.mean(n, "encode") * 1e3
        high = keeper.costs.expect_total(n) * 1e3
        deadline_ms = int(low) + 1
        assert deadline_ms < high, (low, high)  # room for an answer, none for the work
        resp = bid(ch, events(n, seed=41, test=True), batch_id="shed", deadline_ms=deadline_ms)
    assert all(d.no_bid_reason == pb.NO_BID_REASON_DEADLINE for d in resp.decisions)
    assert resp.server_latency_us > 0


def test_an_unparseable_stream_message_is_answered_with_the_batch_id_it_carried(channel):
    call = channel.stream_stream("/adbid.v1.Bidder/BidStream",
                                 request_serializer=None,
                                 response_deserializer=pb.BidResponse.FromString)
    good = pb.BidRequest(batch_id="fine", events=events(2, seed=42, test=True))
    broken = pb.BidRequest(batch_id="broken-7").SerializeToString() + b"\xff\xff\xff"
    replies = {r.batch_id: r for r in call(iter([good.SerializeToString(), broken]),
                                           timeout=10)}
    assert set(replies) == {"fine", "broken-7"}
    assert replies["broken-7"].server_latency_us > 0
    assert len(replies["fine"].decisions) == 2


def test_a_late_retry_keeps_the_first_answers_reservation(server):
    """A retry's answer that is withheld as late withdraws nothing: the bid's reservation
    belongs to its first answer, which may have reached the exchange."""
    from adbid.edge.decode import decode_request as decode

    evs = events(64, seed=23)
    p, keeper, ledger = server.server.pipeline, server.server.keeper, server.server.ledger

    async def decide_and_withdraw():
        first, _ = await p.run(decode(pb.BidRequest(events=evs)), keeper.unbounded())
        again, _ = await p.run(decode(pb.BidRequest(events=evs)), keeper.unbounded())
        return first, again, p.withdraw(decode(pb.BidRequest(events=evs)), again)

    first, again, withdrawn = server.call(decide_and_withdraw())
    bids = [evs[i].request_id for i in np.flatnonzero(first.bid).tolist()]
    assert bids and (again.bid == first.bid).all()
    assert withdrawn == 0 and all(rid in ledger.open for rid in bids)

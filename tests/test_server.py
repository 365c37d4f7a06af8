"""Integration: a real server on 127.0.0.1:0, called through real gRPC channels."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from adbid import metrics, stages
from adbid.money.units import impression_cost_micros
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events


def bid(channel, events, batch_id="b", timeout=10.0, **kw) -> pb.BidResponse:
    stub = bidder_pb2_grpc.BidderStub(channel)
    return stub.Bid(pb.BidRequest(batch_id=batch_id, events=events, **kw), timeout=timeout)


def status(channel) -> admin_pb2.StatusResponse:
    return admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)


def tiny_events(n, seed=0, **kw):
    return make_events(n, np.random.default_rng(seed), n_users=2_000, **kw)


@pytest.mark.parametrize("n", [1, 64, 1024])
def test_one_decision_per_event_in_order(channel, n):
    events = tiny_events(n, seed=n)
    resp = bid(channel, events, batch_id=f"batch-{n}")
    assert resp.batch_id == f"batch-{n}"
    assert [d.request_id for d in resp.decisions] == [e.request_id for e in events]
    assert resp.world_version.startswith("demo-s7-")


def test_bid_prices_respect_floor_value_and_budget(server, channel):
    events = tiny_events(1024, seed=5)
    resp = bid(channel, events)
    bids = [(e, d) for e, d in zip(events, resp.decisions) if d.bid]
    assert len(bids) > 50, "the tiny world should bid on a good share of demo traffic"
    for e, d in bids:
        assert e.floor_cpm_micros <= d.price_cpm_micros <= d.value_cpm_micros
        assert d.campaign_id and d.creative_id and 0 < d.score <= 1
        assert d.no_bid_reason == pb.NO_BID_REASON_UNSPECIFIED
    for d in resp.decisions:
        if not d.bid:
            assert d.no_bid_reason != pb.NO_BID_REASON_UNSPECIFIED and d.price_cpm_micros == 0
    s = status(channel)
    by_id = {c.campaign_id: c for c in s.campaigns}
    reserved = {}
    for _, d in bids:
        reserved[d.campaign_id] = reserved.get(d.campaign_id, 0) + impression_cost_micros(
            d.price_cpm_micros)
    for cid, c in by_id.items():
        assert c.reserved_micros == reserved.get(cid, 0)
        assert c.spent_micros + c.reserved_micros <= c.budget_micros


def test_health_is_serving_after_warm_up(channel, server):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "adbid.v1.Bidder", "adbid.v1.Admin"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    assert server.server.keeper.timers.summary()["total"]["count"] >= 1  # warm-up ran


def test_reflection_lists_the_services(channel):
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"adbid.v1.Bidder", "adbid.v1.Admin", "grpc.health.v1.Health"} <= services


def test_status_names_provider_world_and_auc(server, channel, tiny_world):
    s = status(channel)
    # The provider the session runs on (CUDA on a GPU machine, else the CPU).
    assert s.execution_provider == server.server.pipeline.scorer.provider
    assert s.execution_provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert s.world_version == tiny_world.version
    assert s.model_auc == pytest.approx(tiny_world.manifest["model"]["auc"])
    assert s.ads == tiny_world.ad_index.ntotal and s.top_k > 0 and s.faiss_threads == 1
    assert {st.stage for st in s.stages} >= {"decode", "retrieval", "scoring", "decision"}


def test_test_traffic_touches_no_budget(channel):
    resp = bid(channel, tiny_events(256, seed=9, test=True))
    assert any(d.bid for d in resp.decisions)
    assert all(c.reserved_micros == 0 and c.spent_micros == 0 for c in status(channel).campaigns)


def test_invalid_events_get_per_event_errors_and_the_rest_is_decided(channel):
    """Invalid events are answered INVALID_EVENT with the field, and the valid ones beside
    them are decided exactly as they are without them (test traffic: no state changes
    between the two calls)."""
    events = tiny_events(6, seed=2, test=True)
    clean = bid(channel, [events[i] for i in (0, 3, 4, 5)], batch_id="clean")
    assert any(d.bid for d in clean.decisions)
    events[1].floor_cpm_micros = -5
    events[2].request_id = ""
    resp = bid(channel, events, batch_id="mixed")
    assert len(resp.decisions) == 6
    for i in (1, 2):
        d = resp.decisions[i]
        assert not d.bid and d.no_bid_reason == pb.NO_BID_REASON_INVALID_EVENT and d.error
    assert "floor_cpm_micros" in resp.decisions[1].error
    assert "request_id" in resp.decisions[2].error
    for alone, mixed in zip(clean.decisions, [resp.decisions[i] for i in (0, 3, 4, 5)]):
        assert (mixed.bid, mixed.price_cpm_micros, mixed.campaign_id, mixed.creative_id,
                mixed.no_bid_reason) == (alone.bid, alone.price_cpm_micros, alone.campaign_id,
                                         alone.creative_id, alone.no_bid_reason)


def test_empty_batch_gets_an_empty_answer(channel):
    assert len(bid(channel, []).decisions) == 0


def test_batch_above_the_maximum_is_invalid_argument(server_factory):
    s = server_factory(max_batch_events=10)
    with grpc.insecure_channel(s.target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            bid(ch, tiny_events(11))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "maximum of 10" in err.value.details()


def test_bid_stream_answers_every_batch_with_its_id(channel):
    stub = bidder_pb2_grpc.BidderStub(channel)
    batches = [pb.BidRequest(batch_id=f"s{i}", events=tiny_events(32, seed=100 + i))
               for i in range(12)]
    replies = list(stub.BidStream(iter(batches), timeout=30))
    assert sorted(r.batch_id for r in replies) == sorted(b.batch_id for b in batches)
    by_id = {r.batch_id: r for r in replies}
    for b in batches:
        assert [d.request_id for d in by_id[b.batch_id].decisions] == \
            [e.request_id for e in b.events]


def test_outcomes_settle_release_and_are_idempotent(channel):
    resp = bid(channel, tiny_events(512, seed=11))
    won, lost = [d for d in resp.decisions if d.bid][:2]
    stub = bidder_pb2_grpc.BidderStub(channel)
    clearing = won.price_cpm_micros // 2
    notices = [pb.Outcome(request_id=won.request_id, type=pb.OUTCOME_TYPE_WIN,
                          clearing_price_cpm_micros=clearing),
               pb.Outcome(request_id=lost.request_id, type=pb.OUTCOME_TYPE_LOSS),
               pb.Outcome(request_id=won.request_id, type=pb.OUTCOME_TYPE_WIN,
                          clearing_price_cpm_micros=clearing),
               pb.Outcome(request_id="never-bid", type=pb.OUTCOME_TYPE_WIN)]
    r = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=notices), timeout=5).results
    assert [x.accepted for x in r] == [True, True, True, False]
    assert [x.duplicate for x in r] == [False, False, True, False]
    assert "no bid" in r[3].error
    c = {c.campaign_id: c for c in status(channel).campaigns}[won.campaign_id]
    assert c.spent_micros == impression_cost_micros(clearing)


def test_a_deadline_too_short_for_the_work_reserves_nothing(server_factory):
    """A batch admitted on arrival whose retrieval no longer fits (by the cost model, set
    here so that the outcome does not depend on this machine's speed) is answered
    DEADLINE for every event, and reserves nothing."""
    server = server_factory()
    keeper = server.server.keeper

    async def slow_retrieval() -> None:
        keeper.costs.reset()
        keeper.costs.observe(stages.TOTAL, 0.001, 64)
        keeper.costs.observe(stages.RETRIEVAL, 10.0, 64)

    with grpc.insecure_channel(server.target) as ch:
        live = tiny_events(64, seed=4)
        assert any(d.bid for d in bid(ch, tiny_events(64, seed=4, test=True)).decisions)
        reserved_before = sum(c.reserved_micros for c in status(ch).campaigns)
        server.call(slow_retrieval())
        resp = bid(ch, live, deadline_ms=1000)
        assert len(resp.decisions) == 64
        assert {d.no_bid_reason for d in resp.decisions} == {pb.NO_BID_REASON_DEADLINE}
        assert not any(d.bid for d in resp.decisions)
        assert sum(c.reserved_micros for c in status(ch).campaigns) == reserved_before
    assert metrics.SHED.labels(stages.RETRIEVAL)._value.get() >= 64


def test_update_campaign_validates_and_applies(channel):
    admin = admin_pb2_grpc.AdminStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(campaign_id="nope", active=False),
                             timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    resp = bid(channel, tiny_events(256, seed=21))
    spent_cid = next(d.campaign_id for d in resp.decisions if d.bid)
    with pytest.raises(grpc.RpcError) as err:
        admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(campaign_id=spent_cid,
                                                             budget_micros=0), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below" in err.value.details()
    # Pause every campaign: nothing bids, with the reason.
    for c in status(channel).campaigns:
        r = admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(
            campaign_id=c.campaign_id, active=False, reason="test"), timeout=5)
        assert not r.campaign.active
    resp = bid(channel, tiny_events(64, seed=22))
    assert not any(d.bid for d in resp.decisions)
    assert pb.NO_BID_REASON_CAMPAIGN_INACTIVE in {d.no_bid_reason for d in resp.decisions}


def test_publisher_blocks_reach_the_core(channel):
    events = tiny_events(64, seed=23)
    for e in events:
        del e.blocked_categories[:]
        e.blocked_categories.extend(f"IAB{i}" for i in range(1, 27))
    resp = bid(channel, events)
    assert not any(d.bid for d in resp.decisions)
    assert {d.no_bid_reason for d in resp.decisions} <= {
        pb.NO_BID_REASON_BLOCKED, pb.NO_BID_REASON_TARGETING, pb.NO_BID_REASON_NO_CANDIDATES,
        pb.NO_BID_REASON_CAMPAIGN_INACTIVE, pb.NO_BID_REASON_FREQUENCY_CAP}
    assert pb.NO_BID_REASON_BLOCKED in {d.no_bid_reason for d in resp.decisions}


def test_frequency_caps_bind_through_the_server(server, channel):
    core = server.server.pipeline.core
    capped = np.flatnonzero(core.campaigns.freq_cap > 0)
    assert len(capped), "the tiny world has frequency-capped campaigns"
    # One user, many events: each capped campaign bids at most its cap for that user.
    events = tiny_events(400, seed=24)
    for e in events:
        e.user_id = "u0000042"
    wins: dict[str, int] = {}
    for i in range(0, 400, 100):
        for d in bid(channel, events[i:i + 100]).decisions:
            if d.bid:
                wins[d.campaign_id] = wins.get(d.campaign_id, 0) + 1
    caps = {core.campaigns.ids[c]: int(core.campaigns.freq_cap[c]) for c in capped}
    assert any(c in wins for c in caps)
    for cid, n in wins.items():
        if cid in caps:
            assert n <= caps[cid], (cid, n, caps[cid])


def test_the_send_margin_comes_off_every_deadline(server_factory):
    """The time kept back for the way back to the caller is not the server's to spend: a
    deadline shorter than the margin cannot be met, the same deadline with room can."""
    server = server_factory(send_margin_ms=40.0)
    with grpc.insecure_channel(server.target) as ch:
        bid(ch, tiny_events(16, seed=5), deadline_ms=0)  # warm (default deadline, 2 s)
        try:
            resp = bid(ch, tiny_events(16, seed=6), deadline_ms=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            raise AssertionError(f"answered inside a 30 ms deadline with a 40 ms margin: "
                                 f"{[d.no_bid_reason for d in resp.decisions][:3]}")
        assert len(bid(ch, tiny_events(16, seed=7), deadline_ms=500).decisions) == 16


def test_grpc_events_are_banner_slots_and_never_get_a_video_creative(channel, tiny_world):
    video = {str(tiny_world.ad_creative_ids[row]) for row in tiny_world.video}
    assert video  # the tiny world has video creatives to avoid
    resp = bid(channel, tiny_events(1024, seed=77, test=True))
    chosen = {d.creative_id for d in resp.decisions if d.bid}
    assert chosen and not chosen & video

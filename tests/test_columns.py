"""The columnar wire form (EventColumns in, DecisionColumns out), through a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from adbid.client import decisions, to_columns
from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc, lenient_pb2
from adbid.world.demo_traffic import make_events

BID = "/adbid.v1.Bidder/Bid"


def events(n, seed=0, test=True):
    evs = make_events(n, np.random.default_rng(seed), n_users=2_000, test=test)
    evs[1].floor_cpm_micros = -5  # invalid: negative floor
    evs[2].device_type = 99  # invalid: unknown enum value
    evs[3].blocked_categories[:] = ["IAB7-39", "IAB25"]
    evs[4].blocked_advertiser_domains[:] = ["advertiser3.example", "nobody.example"]
    evs[5].request_id = evs[6].request_id  # invalid: duplicate in the batch
    return evs


def test_columns_decide_exactly_as_event_messages(channel):
    stub = bidder_pb2_grpc.BidderStub(channel)
    evs = events(300)  # test traffic: no budget or frequency effects, so both calls see one state
    by_event = stub.Bid(pb.BidRequest(batch_id="e", events=evs), timeout=10)
    by_column = stub.Bid(pb.BidRequest(batch_id="c", columns=to_columns(evs)), timeout=10)
    assert not by_column.decisions and by_column.HasField("columns")
    assert by_column.batch_id == "c" and by_column.world_version == by_event.world_version
    want, got = list(by_event.decisions), decisions(by_column)
    assert got == want
    assert sum(d.bid for d in got) > 50  # the comparison covers real bids...
    invalid = [d for d in got if d.no_bid_reason == pb.NO_BID_REASON_INVALID_EVENT]
    assert {d.error.split(":")[0] for d in invalid} == {"floor_cpm_micros", "device_type",
                                                        "request_id"}


def test_columnar_bids_reserve_budget_and_settle(channel):
    stub = bidder_pb2_grpc.BidderStub(channel)
    evs = make_events(64, np.random.default_rng(7), n_users=2_000)
    resp = stub.Bid(pb.BidRequest(columns=to_columns(evs)), timeout=10)
    c = resp.columns
    won = [i for i, b in enumerate(c.bid) if b]
    assert won
    i = won[0]
    assert 0 < c.price_cpm_micros[i] <= c.value_cpm_micros[i] and c.campaign_id[i]
    notice = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=[pb.Outcome(
        request_id=c.request_id[i], type=pb.OUTCOME_TYPE_WIN,
        clearing_price_cpm_micros=c.price_cpm_micros[i])]), timeout=10)
    assert notice.results[0].accepted and not notice.results[0].duplicate
    # A settled id cannot bid again; the open ones are answered as before (a retry).
    again = stub.Bid(pb.BidRequest(columns=to_columns(evs)), timeout=10)
    assert again.columns.no_bid_reason[i] == pb.NO_BID_REASON_INVALID_EVENT
    assert again.columns.error[i].startswith("request_id: already used by a bid whose "
                                             "reservation is closed")
    for j in won[1:]:
        assert again.columns.bid[j] and \
            again.columns.price_cpm_micros[j] == c.price_cpm_micros[j]


def test_only_request_id_is_required(channel):
    cols = pb.EventColumns(request_id=["a", "b", "c"])
    resp = bidder_pb2_grpc.BidderStub(channel).Bid(pb.BidRequest(columns=cols), timeout=10)
    assert list(resp.columns.request_id) == ["a", "b", "c"]
    assert len(resp.columns.no_bid_reason) == 3 and not resp.columns.error


@pytest.mark.parametrize("damage, problem", [
    (lambda c: c.floor_cpm_micros.pop(), "columns.floor_cpm_micros: 9 entries for 10 events"),
    (lambda c: c.user_id.append("extra"), "columns.user_id: 11 entries for 10 events"),
    (lambda c: c.blocked_categories_count.__setitem__(0, 5),
     "columns.blocked_categories_count: counts add up to"),
    (lambda c: c.ClearField("blocked_advertiser_domains_count"),
     "but no blocked_advertiser_domains_count column"),
])
def test_ragged_columns_are_refused_with_the_column_named(channel, damage, problem):
    evs = make_events(10, np.random.default_rng(1), n_users=2_000)
    evs[0].blocked_categories.append("IAB25")
    evs[0].blocked_advertiser_domains.append("a.example")
    req = pb.BidRequest(columns=to_columns(evs))
    damage(req.columns)
    with pytest.raises(grpc.RpcError) as err:
        bidder_pb2_grpc.BidderStub(channel).Bid(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in err.value.details()


def test_events_and_columns_together_are_refused(channel):
    evs = make_events(2, np.random.default_rng(2), n_users=2_000)
    with pytest.raises(grpc.RpcError) as err:
        bidder_pb2_grpc.BidderStub(channel).Bid(
            pb.BidRequest(events=evs, columns=to_columns(evs)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events or columns, not both" in err.value.details()


def test_invalid_utf8_in_a_column_fails_only_its_own_event(channel):
    evs = make_events(4, np.random.default_rng(3), n_users=2_000, test=True)
    evs[3].blocked_categories.append("IAB25")
    loose = lenient_pb2.LenientBidRequest()
    loose.ParseFromString(pb.BidRequest(columns=to_columns(evs)).SerializeToString())
    loose.columns.context_text[1] = b"caf\xe9 news"
    loose.columns.blocked_categories[0] = b"\xc3\x28"  # event 3's only entry
    raw = channel.unary_unary(BID, request_serializer=None, response_deserializer=None)
    resp = pb.BidResponse.FromString(raw(loose.SerializeToString(), timeout=10))
    c = resp.columns
    assert list(c.request_id) == [e.request_id for e in evs]
    assert dict(c.error) == {1: "context_text: not valid UTF-8",
                             3: "blocked_categories: not valid UTF-8"}
    assert c.no_bid_reason[0] != pb.NO_BID_REASON_INVALID_EVENT

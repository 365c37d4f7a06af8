"""Encode stage: decisions -> protobuf, one BidDecision per event, in request order."""

from __future__ import annotations

from collections.abc import Sequence

from adbid.decision import Decisions
from adbid.decode import EventBatch
from adbid.v1 import bidder_pb2 as pb


def encode(batch_id: str, batch: EventBatch, dec: Decisions, campaign_ids: Sequence[str],
           creative_ids: Sequence[str], world_version: str) -> pb.BidResponse:
    resp = pb.BidResponse(batch_id=batch_id, world_version=world_version)
    add = resp.decisions.add
    errors = batch.errors
    for i, (rid, bid, price, value, c, ad, score, reason) in enumerate(zip(
            batch.request_id, dec.bid.tolist(), dec.price_cpm_micros.tolist(),
            dec.value_cpm_micros.tolist(), dec.campaign_row.tolist(), dec.ad_row.tolist(),
            dec.score.tolist(), dec.reason.tolist())):
        if bid:
            add(request_id=rid, bid=True, price_cpm_micros=price, value_cpm_micros=value,
                campaign_id=campaign_ids[c], creative_id=creative_ids[ad], score=score)
        elif reason == pb.NO_BID_REASON_INVALID_EVENT:
            add(request_id=rid, no_bid_reason=reason, error=errors.get(i, ""))
        else:
            add(request_id=rid, no_bid_reason=reason, value_cpm_micros=value)
    return resp


def all_no_bid(batch_id: str, request_ids: Sequence[str], reason: int,
               world_version: str) -> pb.BidResponse:
    """A response with the same no-bid reason for every event (deadline, overload)."""
    resp = pb.BidResponse(batch_id=batch_id, world_version=world_version)
    add = resp.decisions.add
    for rid in request_ids:
        add(request_id=rid, no_bid_reason=reason)
    return resp

"""Encode stage: decisions -> protobuf, one decision per event, in request order.

A request that came as columns is answered as columns (DecisionColumns): one
`extend` per column instead of a message per event.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def id_table(ids: Sequence[str]) -> np.ndarray:
    """An object array of ids with "" appended: row -1 (no bid) picks the empty id."""
    return np.array([*ids, ""], dtype=object)


def encode_columns(batch_id: str, batch: EventBatch, dec: Decisions, campaign_table: np.ndarray,
                   creative_table: np.ndarray, world_version: str) -> pb.BidResponse:
    """The same answer as `encode`, as DecisionColumns. The tables come from `id_table`."""
    resp = pb.BidResponse(batch_id=batch_id, world_version=world_version)
    c = resp.columns
    bid = dec.bid
    invalid = dec.reason == pb.NO_BID_REASON_INVALID_EVENT
    c.request_id.extend(batch.request_id)
    c.bid.extend(bid.tolist())
    c.price_cpm_micros.extend(np.where(bid, dec.price_cpm_micros, 0).tolist())
    c.value_cpm_micros.extend(np.where(invalid, 0, dec.value_cpm_micros).tolist())
    c.campaign_id.extend(campaign_table[np.where(bid, dec.campaign_row, -1)].tolist())
    c.creative_id.extend(creative_table[np.where(bid, dec.ad_row, -1)].tolist())
    c.score.extend(np.where(bid, dec.score, 0).tolist())
    c.no_bid_reason.extend(np.where(bid, 0, dec.reason).tolist())
    if invalid.any():
        errors = batch.errors
        for i in np.flatnonzero(invalid).tolist():
            c.error[i] = errors.get(i, "")
    return resp


def all_no_bid(batch_id: str, request_ids: Sequence[str], reason: int, world_version: str,
               columnar: bool = False, error: str = "") -> pb.BidResponse:
    """A response with the same no-bid reason (and error) for every event, in either form."""
    resp = pb.BidResponse(batch_id=batch_id, world_version=world_version)
    if columnar:
        n = len(request_ids)
        c = resp.columns
        c.request_id.extend(request_ids)
        c.bid.extend([False] * n)
        c.price_cpm_micros.extend([0] * n)
        c.value_cpm_micros.extend([0] * n)
        c.campaign_id.extend([""] * n)
        c.creative_id.extend([""] * n)
        c.score.extend([0.0] * n)
        c.no_bid_reason.extend([reason] * n)
        if error:
            for i in range(n):
                c.error[i] = error
        return resp
    add = resp.decisions.add
    for rid in request_ids:
        add(request_id=rid, no_bid_reason=reason, error=error)
    return resp

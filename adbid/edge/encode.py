"""Encode stage: decisions -> protobuf, one decision per event, in request order.

A request that came as columns is answered as columns (DecisionColumns), written
straight to bytes by adbid._wire instead of a message per event.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np

from adbid import _wire
from adbid.stages.batch import EventBatch
from adbid.stages.decision import Decisions
from adbid.stages.pipeline import Pipeline
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
            add(request_id=rid, no_bid_reason=reason, value_cpm_micros=value, score=score)
    return resp


def id_table(ids: Sequence[str]) -> np.ndarray:
    """An object array of ids with "" appended: row -1 (no bid) picks the empty id."""
    return np.array([*ids, ""], dtype=object)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def answer(batch_id: str, batch: EventBatch, dec: Decisions, pipeline: Pipeline,
           columnar: bool) -> pb.BidResponse | bytes:
    """The answer to a decided batch, in the form the request came in (columns as bytes,
    events as a message). A pipeline's id tables are built once, on its first answer."""
    version = pipeline.world.version
    if not columnar:
        return encode(batch_id, batch, dec, pipeline.campaign_ids, pipeline.creative_ids,
                      version)
    tables = _TABLES.get(pipeline)
    if tables is None:
        tables = _TABLES[pipeline] = (id_table(pipeline.campaign_ids),
                                      id_table(pipeline.creative_ids))
    return encode_columns(batch_id, batch, dec, tables[0], tables[1], version)


def encode_columns(batch_id: str, batch: EventBatch, dec: Decisions, campaign_table: np.ndarray,
                   creative_table: np.ndarray, world_version: str) -> bytes:
    """The same answer as `encode`, as DecisionColumns, serialized by adbid._wire (no
    protobuf objects). The tables come from `id_table`. Add the latency with `finish`."""
    bid = dec.bid
    invalid = dec.reason == pb.NO_BID_REASON_INVALID_EVENT
    errors = {i: batch.errors.get(i, "") for i in np.flatnonzero(invalid).tolist()} \
        if invalid.any() else {}
    return _wire.write_columns(
        batch_id, batch.request_id, bid.astype(np.int64),
        np.where(bid, dec.price_cpm_micros, 0),
        campaign_table[np.where(bid, dec.campaign_row, -1)].tolist(),
        creative_table[np.where(bid, dec.ad_row, -1)].tolist(),
        np.where(invalid, 0, dec.score).astype(np.float32),
        np.where(bid, 0, dec.reason).astype(np.int64),
        np.where(invalid, 0, dec.value_cpm_micros), errors, world_version)


def all_no_bid(batch_id: str, request_ids: Sequence[str], reason: int, world_version: str,
               columnar: bool = False, error: str = "") -> pb.BidResponse | bytes:
    """A response with the same no-bid reason (and error) for every event, in either form."""
    if columnar:
        n = len(request_ids)
        zeros = np.zeros(n, dtype=np.int64)
        return _wire.write_columns(batch_id, list(request_ids), zeros, zeros, [""] * n, [""] * n,
                                   np.zeros(n, dtype=np.float32), np.full(n, reason, np.int64),
                                   zeros, dict.fromkeys(range(n), error) if error else {},
                                   world_version)
    resp = pb.BidResponse(batch_id=batch_id, world_version=world_version)
    add = resp.decisions.add
    for rid in request_ids:
        add(request_id=rid, no_bid_reason=reason, error=error)
    return resp


def finish(resp: pb.BidResponse | bytes, server_latency_us: int) -> pb.BidResponse | bytes:
    """Set server_latency_us on a response in either form (appended to written bytes)."""
    if isinstance(resp, bytes):
        return resp + _wire.latency_field(server_latency_us)
    resp.server_latency_us = server_latency_us
    return resp


def serialize(resp: pb.BidResponse | bytes) -> bytes:
    """The gRPC response serializer: written responses are bytes already."""
    return resp if isinstance(resp, bytes) else resp.SerializeToString()

"""Notices: win, loss and billing outcomes into the books (ReportOutcomes).

Each outcome is applied to the spend ledger by request id: a win or a billing
settles the bid's reservation at the clearing price, a loss releases it (and the
frequency count it took). Notices are idempotent by request id. The answer is
sent only once every applied notice is durable. What a notice says about the market (the
clearing price, a loss's minimum to win and reason) goes to the ledger's MarketFeedback.
"""

from __future__ import annotations

import time

from adbid import metrics
from adbid.edge.decode import BadRequest
from adbid.edge.parse import UndecodableRequest
from adbid.edge.relay import WorkerRelay
from adbid.money.feedback import Observation
from adbid.money.ledger import NoticeResult
from adbid.stages.pipeline import Pipeline
from adbid.stages.shading import ServedShading
from adbid.v1 import bidder_pb2 as pb

OUTCOME_NAMES = {v: pb.OutcomeType.Name(v) for v in pb.OutcomeType.values() if v}
for _kind in OUTCOME_NAMES.values():
    for _result in ("accepted", "duplicate", "rejected"):
        metrics.NOTICES.labels(_kind, _result)  # exported at 0 from the start


def parse_outcomes(raw: bytes, max_outcomes: int) -> pb.ReportOutcomesRequest:
    request = pb.ReportOutcomesRequest()
    try:
        request.ParseFromString(raw)
    except Exception as exc:
        raise UndecodableRequest(f"request: not an adbid.v1.ReportOutcomesRequest ({exc})") \
            from None
    if len(request.outcomes) > max_outcomes:
        raise BadRequest(f"outcomes: {len(request.outcomes)} is above the maximum of "
                         f"{max_outcomes}")
    return request


async def apply_one(pipeline: Pipeline, request_id: str, outcome: int,
                    clearing_cpm_micros: int, min_to_win_cpm_micros: int = 0,
                    loss_reason: int = 0) -> NoticeResult:
    """One notice into the books, made durable before it returns (the HTTP notices)."""
    ledger = pipeline.ledger
    late_before = ledger.late_wins
    result = _apply(pipeline, request_id, outcome, clearing_cpm_micros,
                    min_to_win_cpm_micros, loss_reason)
    await ledger.flush()
    metrics.LATE_WINS.inc(ledger.late_wins - late_before)
    return result


def _apply(pipeline: Pipeline, request_id: str, outcome: int, clearing_cpm_micros: int,
           min_to_win_cpm_micros: int = 0, loss_reason: int = 0) -> NoticeResult:
    ledger = pipeline.ledger
    bid = ledger.open.get(request_id) or ledger.doubt.get(request_id)
    r = ledger.apply(request_id, outcome, clearing_cpm_micros)
    if r.released is not None:
        pipeline.core.release_frequency(r.released, int(time.time()))
    if bid is not None and r.accepted and not r.duplicate:  # the market's first word on it
        won = outcome != pb.OUTCOME_TYPE_LOSS
        ledger.feedback.record(Observation(
            bid[0], bid[1], won, (clearing_cpm_micros or bid[1]) if won
            else max(min_to_win_cpm_micros, 0), 0 if won else loss_reason, int(time.time() * 1000)))
        if isinstance(pipeline.shading_policy, ServedShading):  # learned shading's feedback
            pipeline.shading_policy.observe(request_id, min_to_win_cpm_micros)
    return r


async def apply_outcomes(pipeline: Pipeline, request: pb.ReportOutcomesRequest,
                         relay: WorkerRelay | None = None) -> pb.ReportOutcomesResponse:
    """Apply the notices, make them durable, then answer with one result each. With
    `relay` (--workers), notices for ids this worker does not know go to the worker that
    does (adbid.edge.relay)."""
    ledger = pipeline.ledger
    resp = pb.ReportOutcomesResponse()
    late_before = ledger.late_wins
    elsewhere = {} if relay is None else await relay.find(
        [o for o in request.outcomes if not ledger.knows(o.request_id)])
    for o in request.outcomes:
        if (there := elsewhere.get(o.request_id)) is not None:
            resp.results.append(there)
            continue
        r = _apply(pipeline, o.request_id, o.type, o.clearing_price_cpm_micros,
                   o.min_to_win_cpm_micros, o.loss_reason)
        metrics.NOTICES.labels(OUTCOME_NAMES.get(o.type, "UNKNOWN"),
                               "duplicate" if r.duplicate else
                               "accepted" if r.accepted else "rejected").inc()
        resp.results.add(request_id=o.request_id, accepted=r.accepted, error=r.error,
                         duplicate=r.duplicate)
    await ledger.flush()
    metrics.LATE_WINS.inc(ledger.late_wins - late_before)
    return resp

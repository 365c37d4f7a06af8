"""Notices: win, loss and billing outcomes into the books (ReportOutcomes).

Each outcome is applied to the spend ledger by request id: a win or a billing
settles the bid's reservation at the clearing price, a loss releases it (and the
frequency count it took). Notices are idempotent by request id. The answer is
sent only once every applied notice is durable.
"""

from __future__ import annotations

import time

from adbid import metrics
from adbid.edge.decode import BadRequest, UndecodableRequest
from adbid.stages.pipeline import Pipeline
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


async def apply_outcomes(pipeline: Pipeline,
                         request: pb.ReportOutcomesRequest) -> pb.ReportOutcomesResponse:
    """Apply the notices, make them durable, then answer with one result each."""
    ledger, core = pipeline.ledger, pipeline.core
    resp = pb.ReportOutcomesResponse()
    late_before = ledger.late_wins
    for o in request.outcomes:
        r = ledger.apply(o.request_id, o.type, o.clearing_price_cpm_micros)
        if r.released is not None:
            core.release_frequency(r.released, int(time.time()))
        metrics.NOTICES.labels(OUTCOME_NAMES.get(o.type, "UNKNOWN"),
                               "duplicate" if r.duplicate else
                               "accepted" if r.accepted else "rejected").inc()
        resp.results.add(request_id=o.request_id, accepted=r.accepted, error=r.error,
                         duplicate=r.duplicate)
    await ledger.flush()
    metrics.LATE_WINS.inc(ledger.late_wins - late_before)
    return resp

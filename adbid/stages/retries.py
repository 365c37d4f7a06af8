"""Retried request ids: an exchange that did not hear an answer sends the same request
again, and a retried bid must get its first answer, reserving nothing twice."""

from __future__ import annotations

from adbid.money.ledger import SpendLedger
from adbid.stages.batch import EventBatch
from adbid.stages.decision import ANSWERED_BEFORE, Decisions
from adbid.v1 import bidder_pb2 as pb


def retried_events(ledger: SpendLedger, batch: EventBatch) -> dict[int, tuple]:
    """Events whose request id bid before: a retry of an open bid with the same content
    gets that bid's answer again (position -> its open reservation, answer included);
    any other reuse is an invalid event, with the reason (in batch.errors)."""
    used = [i for i in ledger.used(batch.request_id) if i not in batch.errors]
    retried = {}
    for i, fingerprint in zip(used, batch.fingerprints(used).tolist()):
        found = ledger.retry(batch.request_id[i], fingerprint)
        if isinstance(found, str):
            batch.errors[i] = found
        else:
            retried[i] = found
    return retried


def answer_again(dec: Decisions, retried: dict[int, tuple]) -> None:
    """The first decision of each retried bid, as it was answered; nothing is reserved or
    counted again."""
    for i, (row, price, _, _, _, _, ad_row, value, score) in retried.items():
        dec.bid[i], dec.reason[i] = True, pb.NO_BID_REASON_UNSPECIFIED
        dec.candidate[i] = ANSWERED_BEFORE
        dec.campaign_row[i], dec.price_cpm_micros[i] = row, price
        dec.ad_row[i], dec.value_cpm_micros[i], dec.score[i] = ad_row, value, score

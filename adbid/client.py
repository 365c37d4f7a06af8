"""Client helpers for the columnar wire form (EventColumns in, DecisionColumns out).

A batching client that already holds its events as columns fills EventColumns
directly; these helpers convert from and to the per-event messages, for clients
that do not, and for tests that compare the two forms.
"""

from __future__ import annotations

from collections.abc import Sequence

from adbid.v1 import bidder_pb2 as pb

SCALARS = ("request_id", "user_id", "context_text", "timestamp_ms", "floor_cpm_micros", "country",
           "device_type", "slot_width_px", "slot_height_px", "site_domain", "auction_type", "test")
LISTS = ("blocked_advertiser_domains", "blocked_categories")
DECISION_FIELDS = ("request_id", "bid", "price_cpm_micros", "campaign_id", "creative_id", "score",
                   "no_bid_reason", "value_cpm_micros")


def to_columns(events: Sequence[pb.AdEvent]) -> pb.EventColumns:
    """The same events as one EventColumns (every column filled, one entry per event)."""
    cols = pb.EventColumns()
    for name in SCALARS:
        getattr(cols, name).extend([getattr(e, name) for e in events])
    for name in LISTS:
        lists = [getattr(e, name) for e in events]
        if any(lists):
            getattr(cols, f"{name}_count").extend([len(v) for v in lists])
            flat = getattr(cols, name)
            for v in lists:
                flat.extend(v)
    return cols


def decisions(resp: pb.BidResponse) -> list[pb.BidDecision]:
    """One BidDecision per event from a response in either form."""
    if not resp.HasField("columns"):
        return list(resp.decisions)
    c = resp.columns
    rows = zip(*(getattr(c, name) for name in DECISION_FIELDS))
    return [pb.BidDecision(**dict(zip(DECISION_FIELDS, row)), error=c.error.get(i, ""))
            for i, row in enumerate(rows)]

"""What a load run asks for (LoadSpec) and what it measured (LoadResult), and the recorder
that fills a result in as answers come back."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import grpc
from hdrh.histogram import HdrHistogram

from adbid.v1 import bidder_pb2 as pb


@dataclass
class LoadSpec:
    target: str = "127.0.0.1:50051"
    admin_target: str = ""  # for the server's stage breakdown; "" = skip
    rate: float = 0.0  # batches/s, open loop; 0 = closed loop at `concurrency`
    concurrency: int = 4
    batch: int = 256
    deadline_ms: float = 10.0
    duration_s: float = 10.0
    max_requests: int = 1_000_000
    test_traffic: bool = False  # True: no budget effects (and no ledger writes)
    n_users: int = 100_000
    seed: int = 1
    max_outstanding: int = 4096  # open loop: arrivals beyond this are counted as dropped
    wire: str = "columns"  # "columns" (EventColumns) or "events" (an AdEvent message each)
    connections: int = 4  # channels (TCP connections), used in turn: SO_REUSEPORT workers
    # are chosen per connection
    rpc: str = "unary"  # "unary" (a Bid call per batch) or "stream" (one BidStream per
    # connection, batches matched to replies by batch_id)


@dataclass
class LoadResult:
    spec: dict
    elapsed_s: float = 0.0
    sent: int = 0
    answered: int = 0
    dropped: int = 0  # never sent: the client had max_outstanding calls open
    expired: int = 0  # open loop: never sent, its deadline passed before the client could send
    errors: dict = field(default_factory=dict)  # status code -> count
    events: int = 0
    decided_events: int = 0  # answered events not shed for the deadline
    bids: int = 0
    shed_events: int = 0  # NO_BID_REASON_DEADLINE
    late: int = 0  # answered, but after the deadline
    late_by_max_us: int = 0  # how far past its deadline the latest of those answers came
    latency_us: dict = field(default_factory=dict)  # p50/p90/p99/p99.9/max of answered calls
    client_lag_p99_us: float = 0.0  # how far behind its schedule the client sent
    # How long the client's event loop was held up (a probe's oversleep; the loop's timers
    # round up to the millisecond, so below ~1 ms it is rounding): an answer that arrives
    # while the loop is held is timed that much late by this client, not by the server.
    client_stall_p99_us: float = 0.0
    client_stall_max_us: float = 0.0
    server_stages: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)  # HDR-encoded latency, lag, stalls: merged

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def goodput_events_per_s(self) -> float:
        return self.decided_events / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("histograms")
        d.update(requests_per_s=self.requests_per_s, events_per_s=self.events_per_s,
                 goodput_events_per_s=self.goodput_events_per_s,
                 bid_rate=self.bids / self.events if self.events else 0.0)
        return d


class Recorder:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.hist = HdrHistogram(1, 60_000_000, 3)
        self.lag = HdrHistogram(1, 60_000_000, 3)
        self.stall = HdrHistogram(1, 60_000_000, 3)
        self.result = LoadResult(spec=asdict(spec))
        self.errors: Counter = Counter()

    def answered(self, resp: pb.BidResponse, latency_s: float) -> None:
        r = self.result
        r.answered += 1
        self.hist.record_value(max(1, int(latency_s * 1e6)))
        over_us = int(latency_s * 1e6 - self.spec.deadline_ms * 1000)
        if over_us > 0:
            r.late += 1
            r.late_by_max_us = max(r.late_by_max_us, over_us)
        if resp.HasField("columns"):
            reasons, bids = list(resp.columns.no_bid_reason), resp.columns.bid
        else:
            reasons = [d.no_bid_reason for d in resp.decisions]
            bids = [d.bid for d in resp.decisions]
        n = len(reasons)
        shed = reasons.count(pb.NO_BID_REASON_DEADLINE)
        r.events += n
        r.shed_events += shed
        r.decided_events += n - shed
        r.bids += sum(bids)

    def failed(self, code: grpc.StatusCode) -> None:
        self.errors[code.name] += 1

    def finish(self, elapsed_s: float) -> LoadResult:
        r = self.result
        r.elapsed_s = elapsed_s
        r.errors = dict(self.errors)
        summarise(r, self.hist, self.lag, self.stall)
        return r


def summarise(r: LoadResult, hist: HdrHistogram, lag: HdrHistogram,
               stall: HdrHistogram) -> None:
    if hist.get_total_count():
        r.latency_us = {"p50": hist.get_value_at_percentile(50),
                        "p90": hist.get_value_at_percentile(90),
                        "p99": hist.get_value_at_percentile(99),
                        "p99.9": hist.get_value_at_percentile(99.9), "max": hist.get_max_value()}
    r.client_lag_p99_us = lag.get_value_at_percentile(99) if lag.get_total_count() else 0.0
    if stall.get_total_count():
        r.client_stall_p99_us = stall.get_value_at_percentile(99)
        r.client_stall_max_us = stall.get_max_value()
    r.histograms = {name: h.encode().decode("ascii")
                    for name, h in (("latency", hist), ("lag", lag), ("stall", stall))}

"""The Bidder service: Bid, BidStream and ReportOutcomes over gRPC.

Requests arrive as raw bytes (see `handlers`), so that a message which does not
parse gets INVALID_ARGUMENT with the reason. Protobuf is converted here and only
here: decode on the way in, encode on the way out; the pipeline sees columns.
When a batch runs, what it may take is the flow wing's business: admission
decides whether it starts at all, its Deadline whether each stage still fits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np

from adbid import logs, metrics
from adbid.config import ServerConfig
from adbid.edge import notices
from adbid.edge.decode import (
    BadRequest,
    EventRows,
    Request,
    batch_size,
    decode_request,
    is_columnar,
    request_ids,
)
from adbid.edge.encode import all_no_bid, answer, finish, serialize
from adbid.edge.errors import Overloaded
from adbid.edge.parse import UndecodableRequest, parse_request, salvage_batch_id
from adbid.edge.relay import WorkerRelay
from adbid.flow.admission import AdmissionLimit, LoopLag
from adbid.flow.batcher import Batcher
from adbid.flow.deadlines import ADMISSION, Deadline, Timekeeper, Unmeetable
from adbid.stages import DECODE, ENCODE
from adbid.stages.batch import EventBatch
from adbid.stages.decision import Decisions
from adbid.stages.pipeline import Pipeline
from adbid.v1 import bidder_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Bidder"].full_name
REASON_NAMES = {v: pb.NoBidReason.Name(v) for v in pb.NoBidReason.values()}
LIVE_EVENTS, TEST_EVENTS = metrics.EVENTS.labels("live"), metrics.EVENTS.labels("test")
LIVE_BIDS, TEST_BIDS = metrics.BIDS.labels("live"), metrics.BIDS.labels("test")
for _value, _name in REASON_NAMES.items():
    if _value:
        metrics.NO_BIDS.labels(_name)  # exported at 0 from the start


class Tally:
    """Events decided and bids made by this process (what Admin.Status reports)."""

    __slots__ = ("bids", "events")

    def __init__(self) -> None:
        self.events = 0
        self.bids = 0


class BidderService:
    """`current()` is the pipeline now serving (read once per batch: reloads swap it);
    `keeper` owns the deadlines."""

    def __init__(self, current: Callable[[], Pipeline], keeper: Timekeeper,
                 cfg: ServerConfig) -> None:
        self.current = current
        self.keeper = keeper
        self.cfg = cfg
        self.tally = Tally()
        self.relay: WorkerRelay | None = None  # --workers: notices for the others' bids
        self._batches = 0
        # Never fewer batches than native threads, or the threads idle while batches wait.
        self.admission = AdmissionLimit(cfg.max_inflight_batches,
                                        minimum=max(1, min(cfg.native_threads,
                                                           cfg.max_inflight_batches)))
        self.loop_lag = LoopLag()
        metrics.ADMISSION_LIMIT.set(int(self.admission.limit))
        # One gathered batch at a time: a second one sent while the first runs would hold
        # one or two requests, and each costs the event loop its lookup and decision (with
        # two, OpenRTB peaked at 1,487 req/s here; with one, 2,714: docs/performance.md).
        self.batcher = Batcher(keeper, keeper.run, cfg.batch_max, parallel=1,
                               window_s=cfg.batch_window_ms / 1e3) if cfg.batcher else None

    def handlers(self) -> grpc.GenericRpcHandler:
        out = serialize  # columnar answers are written as bytes
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Bid": grpc.unary_unary_rpc_method_handler(self.Bid, None, out),
            "BidStream": grpc.stream_stream_rpc_method_handler(self.BidStream, None, out),
            "ReportOutcomes": grpc.unary_unary_rpc_method_handler(
                self.ReportOutcomes, None, pb.ReportOutcomesResponse.SerializeToString),
        })

    async def bid(self, request: Request, deadline: Deadline,
                  errors: dict[int, str] | None = None,
                  pipeline: Pipeline | None = None) -> pb.BidResponse | bytes:
        """Decide one batch and answer it, within `deadline`."""
        t0 = time.perf_counter()
        n = batch_size(request)
        if n > self.cfg.max_batch_events:
            raise BadRequest(f"events: batch of {n} is above the maximum of "
                             f"{self.cfg.max_batch_events}")
        p = pipeline or self.current()
        self._batches += 1
        rid_token = logs.request_id.set(request.batch_id or f"batch-{self._batches}")
        try:
            return await self._bid(request, deadline, errors, p, t0, n)
        finally:
            logs.request_id.reset(rid_token)

    async def _bid(self, request: Request, deadline: Deadline, errors: dict[int, str] | None,
                   p: Pipeline, t0: float, n: int) -> pb.BidResponse | bytes:
        columnar = is_columnar(request)
        budget = deadline.left()
        if not deadline.admits(n):
            self._adapt(0.0, budget, shed=True)
            return finish(all_no_bid(request.batch_id, request_ids(request),
                                     pb.NO_BID_REASON_DEADLINE, p.world.version, columnar),
                          int((time.perf_counter() - t0) * 1e6))
        batch = decode_request(request, errors)
        deadline.record(DECODE, time.perf_counter() - t0, n)
        dec, commit = await self.decide(p, batch, deadline)
        t2 = time.perf_counter()
        resp = answer(request.batch_id, batch, dec, p, columnar)
        deadline.record(ENCODE, time.perf_counter() - t2, n)
        await p.durable(commit, deadline, n)  # the write overlapped encoding
        t3 = time.perf_counter()
        shed = commit is None
        self.keeper.finished(t3 - t0, n, shed, deadline.learn)
        self._adapt(t3 - t0, budget, shed)
        latency_us = int((t3 - t0) * 1e6)
        resp = finish(resp, latency_us)
        deadline.withhold_if_late(lambda: p.withdraw(batch, dec))
        metrics.BATCH_EVENTS.observe(n)
        bids = self.count(batch.is_test, dec)
        log.debug("batch: %d events, %d bids, %d us", n, bids, latency_us)
        return resp

    def count(self, is_test: np.ndarray, dec: Decisions) -> int:
        """Count decided events, bids and no-bid reasons (live and test traffic apart, in
        the metrics); returns the number of bids."""
        n = len(dec.bid)
        bids = int(dec.bid.sum())
        self.tally.events += n
        self.tally.bids += bids
        tests = int(is_test.sum()) if n else 0
        if tests:
            test_bids = int(dec.bid[is_test != 0].sum())
            TEST_EVENTS.inc(tests)
            TEST_BIDS.inc(test_bids)
        else:
            test_bids = 0
        LIVE_EVENTS.inc(n - tests)
        LIVE_BIDS.inc(bids - test_bids)
        if bids < n:
            counts = np.bincount(dec.reason, minlength=len(REASON_NAMES))
            for reason, count in enumerate(counts.tolist()):
                if count and reason:
                    metrics.NO_BIDS.labels(REASON_NAMES.get(reason, str(reason))).inc(count)
        return bids

    async def decide(self, p: Pipeline, batch: EventBatch | EventRows,
                     deadline: Deadline) -> tuple[Decisions, asyncio.Future | None]:
        """A decoded batch's decisions: small ones through the dynamic batcher (gathered
        with other callers' events), the rest straight to the pipeline. OpenRTB's rows
        always go through it when it is on."""
        if self.batcher is not None and (isinstance(batch, EventRows)
                                         or len(batch) <= self.cfg.batch_gather_events):
            return await self.batcher.decide(batch, deadline, p)
        if isinstance(batch, EventRows):
            batch = EventRows.concat([batch])
        return await self.keeper.run(p, batch, deadline)

    def _admit(self) -> bool:
        """Room for one more batch under the adaptive limit. (Refusing while the event loop
        lags was tried: a reload's loading thread lags the loop too, and requests failed.)"""
        return self.admission.admits(self.keeper.inflight_batches)

    def _adapt(self, latency_s: float, budget_s: float, shed: bool) -> None:
        """Feed the admission limit one answered batch; the loop's lag counts as latency
        (the answer still has to be sent, and new requests wait that long to start)."""
        lag = self.loop_lag.recent_s
        self.admission.done(latency_s + lag, budget_s + lag, shed)
        metrics.ADMISSION_LIMIT.set(int(self.admission.limit))
        metrics.LOOP_LAG.set(lag)

    def _deadline(self, request: Request, remaining_s: float | None) -> Deadline:
        return self.keeper.deadline(request.deadline_ms, remaining_s)

    async def Bid(self, raw: bytes, context) -> pb.BidResponse | bytes:
        if not self._admit():  # before parsing: a refusal must cost next to nothing
            metrics.OVERLOAD.inc()
            raise Overloaded(f"overloaded: {self.keeper.inflight_batches} batches in "
                             f"flight, the adaptive limit is {int(self.admission.limit)} (at most "
                             f"{self.cfg.max_inflight_batches}); retry later")
        request, errors = parse_request(raw)
        return await self.bid(request, self._deadline(request, context.time_remaining()), errors)

    async def BidStream(self, request_iterator, context) -> AsyncIterator[pb.BidResponse]:
        """Batches are decided concurrently (up to max_stream_inflight); replies carry batch_id.

        A batch that cannot be taken (overload, bad message) gets a reply too: the stream
        itself never fails because of one batch."""
        replies: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.cfg.max_stream_inflight)
        tasks: set[asyncio.Task] = set()
        version = self.current().world.version

        def refuse(request: Request, reason: int, t0: float, error: str = ""):
            return finish(all_no_bid(request.batch_id, request_ids(request), reason, version,
                                     is_columnar(request), error),
                          int((time.perf_counter() - t0) * 1e6))

        async def one(raw: bytes, remaining: float | None) -> None:
            t0 = time.perf_counter()
            request: Request = pb.BidRequest()
            try:
                request, errors = parse_request(raw)
                if not self._admit():
                    metrics.OVERLOAD.inc()
                    self.keeper.shed(ADMISSION, len(request_ids(request)))
                    reply = refuse(request, pb.NO_BID_REASON_DEADLINE, t0)
                else:
                    reply = await self.bid(request, self._deadline(request, remaining), errors)
            except UndecodableRequest as exc:
                metrics.ERRORS.labels("invalid_request").inc()
                request.batch_id = salvage_batch_id(raw)  # what the client can match
                log.warning("BidStream message %r does not parse: %s", request.batch_id, exc)
                reply = refuse(request, pb.NO_BID_REASON_INVALID_EVENT, t0, str(exc))
            except BadRequest as exc:
                metrics.ERRORS.labels("invalid_request").inc()
                reply = refuse(request, pb.NO_BID_REASON_INVALID_EVENT, t0, str(exc))
            except Unmeetable as exc:
                reply = refuse(request, pb.NO_BID_REASON_DEADLINE, t0, str(exc))
            except Exception:
                log.exception("BidStream batch %r failed", request.batch_id)
                metrics.ERRORS.labels("internal").inc()
                reply = pb.BidResponse(batch_id=request.batch_id)
            finally:
                slots.release()
            await replies.put(reply)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(raw, context.time_remaining()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await replies.put(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
            await reader  # re-raises a reader failure
        finally:
            reader.cancel()

    async def ReportOutcomes(self, raw: bytes, context) -> pb.ReportOutcomesResponse:
        """Apply the notices, make them durable, then acknowledge them."""
        self._batches += 1
        logs.request_id.set(f"notices-{self._batches}")
        request = notices.parse_outcomes(raw, self.cfg.max_batch_events)
        relay = self.relay if self.relay is not None and not self.relay.from_peer(context) \
            else None
        return await notices.apply_outcomes(self.current(), request, relay)

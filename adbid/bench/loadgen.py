"""The load generator behind `adbid bench`: open- and closed-loop load over real gRPC.

Open loop: batches arrive at a fixed mean rate with exponential gaps (Poisson),
whatever the server does, and each latency is measured from the arrival the
schedule planned, not from when the client got round to sending. A server
that falls behind therefore shows its queueing in the tail (no coordinated
omission). The deadline runs from that planned arrival too, as an exchange's
auction clock does: a call sent late carries only the time left as its gRPC
deadline, and one whose deadline passed before it could be sent is counted as
expired and not sent. Closed loop: `concurrency` callers, each sending its next batch when
the last is answered.

Requests are serialized once from 64 template batches; each send swaps a
16-character placeholder for a fresh prefix, so that every request id is
unique (the ledger refuses reused ones) at the cost of one bytes.replace.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
from collections import Counter
from dataclasses import asdict

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram

from adbid.bench.results import LoadResult, LoadSpec, Recorder, summarise
from adbid.client import to_columns
from adbid.v1 import admin_pb2, admin_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events

PLACEHOLDER = "@" * 16
WIRES = ("columns", "events")
RETRY_BACKOFF_S = 0.005  # closed loop: pause after a failed call
BID = "/adbid.v1.Bidder/Bid"
BID_STREAM = "/adbid.v1.Bidder/BidStream"
RPCS = ("unary", "stream")


class _Templates:
    def __init__(self, spec: LoadSpec) -> None:
        if spec.wire not in WIRES:
            raise ValueError(f"wire: {spec.wire!r} is not one of {', '.join(WIRES)}")
        if spec.rpc not in RPCS:
            raise ValueError(f"rpc: {spec.rpc!r} is not one of {', '.join(RPCS)}")
        rng = np.random.default_rng(spec.seed)
        self.data = []
        for _ in range(64):
            events = make_events(spec.batch, rng, n_users=spec.n_users, test=spec.test_traffic,
                                 id_prefix=PLACEHOLDER)
            req = pb.BidRequest(batch_id=PLACEHOLDER, deadline_ms=int(np.ceil(spec.deadline_ms)))
            if spec.wire == "columns":
                req.columns.CopyFrom(to_columns(events))
            else:
                req.events.extend(events)
            self.data.append(req.SerializeToString())
        self.n = 0
        self.run = f"{random.getrandbits(24):06x}"

    def next(self) -> tuple[str, bytes]:
        """(batch_id, request): a template with a fresh prefix for its batch and event ids."""
        self.n += 1
        prefix = f"{self.run}{self.n:010x}"
        return prefix, self.data[self.n % len(self.data)].replace(PLACEHOLDER.encode(),
                                                                  prefix.encode())


def _deadline_field(ms: int) -> bytes:
    """BidRequest.deadline_ms as serialized bytes; appended to a request, it overrides the
    template's (protobuf keeps the last value of a field)."""
    out, v = bytearray([3 << 3]), ms
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


class _Streams:
    """BidStream calls, one per channel, used in turn. A stream answers out of order, so
    each reply is matched to its request by batch_id; a request's own deadline travels as
    its deadline_ms, and a reply that comes after it is a missed deadline."""

    def __init__(self, channels: list) -> None:
        self.calls = [ch.stream_stream(BID_STREAM, request_serializer=None,
                                       response_deserializer=pb.BidResponse.FromString)()
                      for ch in channels]
        self.locks = [asyncio.Lock() for _ in self.calls]  # one write at a time per stream
        self.turn = itertools.cycle(range(len(self.calls)))
        self.waiting: dict[str, asyncio.Future] = {}
        self.readers = [asyncio.create_task(self._read(call)) for call in self.calls]

    async def _read(self, call) -> None:
        try:
            async for resp in call:
                fut = self.waiting.pop(resp.batch_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp)
        except grpc.aio.AioRpcError as exc:  # the stream failed: so do the calls waiting
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(exc)

    async def bid(self, batch_id: str, data: bytes, deadline: float) -> pb.BidResponse:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[batch_id] = fut
        i = next(self.turn)
        try:
            async with self.locks[i]:
                left = deadline - time.perf_counter()  # after waiting for the stream
                if left <= 0:
                    raise TimeoutError
                await self.calls[i].write(data + _deadline_field(max(1, int(left * 1000))))
            return await asyncio.wait_for(fut, deadline - time.perf_counter())
        finally:
            self.waiting.pop(batch_id, None)

    async def close(self) -> None:
        for call, lock in zip(self.calls, self.locks):
            async with lock:
                await call.done_writing()
        await asyncio.gather(*self.readers, return_exceptions=True)


STALL_PROBE_S = 0.002


async def _stall_probe(stall: HdrHistogram) -> None:
    """Until cancelled: how much later than asked this loop wakes from a short sleep."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(STALL_PROBE_S)
        stall.record_value(max(1, int((time.perf_counter() - t - STALL_PROBE_S) * 1e6)))


async def _call(bid, request: tuple[str, bytes], rec: Recorder, scheduled: float) -> None:
    """One call whose deadline is its planned arrival plus the deadline. The time left is
    taken as the call starts, not when it was planned: a task that starts late must not
    carry a later deadline (the server would then answer in time by its clock, and late
    by the auction's)."""
    deadline = scheduled + rec.spec.deadline_ms / 1000
    if time.perf_counter() >= deadline:
        rec.result.expired += 1
        return
    rec.result.sent += 1
    try:
        resp = await bid(*request, deadline)
    except grpc.aio.AioRpcError as exc:
        rec.failed(exc.code())
        return
    except TimeoutError:  # a stream's reply did not come in time
        rec.failed(grpc.StatusCode.DEADLINE_EXCEEDED)
        return
    rec.answered(resp, time.perf_counter() - scheduled)


async def run(spec: LoadSpec) -> LoadResult:
    """One bounded run (duration_s and max_requests); open loop when spec.rate > 0."""
    templates = _Templates(spec)
    rec = Recorder(spec)
    # Distinct channel arguments keep gRPC from sharing one connection among the channels.
    channels = [grpc.aio.insecure_channel(spec.target, options=[("adbid.bench.loadgen.channel", i)])
                for i in range(max(1, spec.connections))]
    streams = probe = None
    try:
        stubs = [ch.unary_unary(BID, request_serializer=None,
                                response_deserializer=pb.BidResponse.FromString)
                 for ch in channels]
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        turn = itertools.cycle(stubs)

        def unary(batch_id: str, data: bytes, deadline: float):
            return next(turn)(data, timeout=deadline - time.perf_counter())

        if spec.rpc == "stream":
            streams = _Streams(channels)
            bid = streams.bid
        else:
            bid = unary

        # What exists now lives through the run: keep it out of the collector's full
        # passes, which otherwise stall this client for tens of ms and show as late answers.
        gc.collect()
        gc.freeze()
        probe = asyncio.create_task(_stall_probe(rec.stall))
        start = time.perf_counter()
        stop_at = start + spec.duration_s
        if spec.rate > 0:
            rng = random.Random(spec.seed)
            tasks: set[asyncio.Task] = set()
            scheduled = start
            planned = 0
            while scheduled < stop_at and planned < spec.max_requests:
                planned += 1
                scheduled += rng.expovariate(spec.rate)
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= spec.max_outstanding:
                    rec.result.dropped += 1
                    continue
                behind = time.perf_counter() - scheduled
                rec.lag.record_value(max(1, int(behind * 1e6)))
                t = asyncio.create_task(_call(bid, templates.next(), rec, scheduled))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        else:
            calls = 0

            async def caller() -> None:
                nonlocal calls
                while time.perf_counter() < stop_at and calls < spec.max_requests:
                    calls += 1
                    refused = sum(rec.errors.values())
                    await _call(bid, templates.next(), rec, time.perf_counter())
                    if sum(rec.errors.values()) > refused:
                        # Back off after a failed call, as a real client does: retrying
                        # at once turns a refusal into a flood that keeps the server busy.
                        await asyncio.sleep(RETRY_BACKOFF_S)

            await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
        result = rec.finish(time.perf_counter() - start)
    finally:
        if probe is not None:
            probe.cancel()
        gc.unfreeze()
        if streams is not None:
            await streams.close()
        await asyncio.gather(*(ch.close() for ch in channels))
    if spec.admin_target:
        try:
            result.server_stages = await server_stages(spec.admin_target)
        except grpc.aio.AioRpcError as exc:  # the load figures stand without the breakdown
            result.server_stages = {"error": f"Admin at {spec.admin_target}: {exc.code().name} "
                                             f"{exc.details()}"}
    return result


def _run_share(spec: LoadSpec) -> LoadResult:
    return asyncio.run(run(spec))


def run_processes(spec: LoadSpec, processes: int) -> LoadResult:
    """The same load from several client processes (each 1/processes of the rate, or of the
    concurrency), so that the client's own event loop is not what saturates; results are
    merged, latency percentiles from the merged HDR histograms."""
    import multiprocessing

    if processes <= 1:
        return asyncio.run(run(spec))
    shares = [LoadSpec(**{**asdict(spec), "rate": spec.rate / processes,
                          "concurrency": max(1, spec.concurrency // processes),
                          "connections": max(1, spec.connections // processes),
                          "max_requests": max(1, spec.max_requests // processes),
                          "seed": spec.seed * 1000 + i, "admin_target": ""})
              for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_run_share, shares)
    out = LoadResult(spec=asdict(spec), elapsed_s=max(p.elapsed_s for p in parts))
    errors: Counter = Counter()
    for p in parts:
        for name in ("sent", "answered", "dropped", "expired", "events", "decided_events",
                     "bids", "shed_events", "late"):
            setattr(out, name, getattr(out, name) + getattr(p, name))
        errors.update(p.errors)
        out.late_by_max_us = max(out.late_by_max_us, p.late_by_max_us)
    out.errors = dict(errors)
    merged = {name: HdrHistogram(1, 60_000_000, 3) for name in ("latency", "lag", "stall")}
    for p in parts:
        for name, h in merged.items():
            if p.histograms.get(name):
                h.decode_and_add(p.histograms[name].encode("ascii"))
    summarise(out, merged["latency"], merged["lag"], merged["stall"])
    out.spec["client_processes"] = processes
    if spec.admin_target:
        out.server_stages = asyncio.run(server_stages(spec.admin_target))
    return out


async def server_stages(admin_target: str) -> dict:
    """The server's own per-stage latency (lifetime), from Admin.Status."""
    async with grpc.aio.insecure_channel(admin_target) as channel:
        s = await admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)
    return {st.stage: {"count": st.count, "mean_us": st.mean_us, "p50_us": st.p50_us,
                       "p99_us": st.p99_us} for st in s.stages}


def sweep(spec: LoadSpec, target_p99_ms: float, start_rate: float, factor: float = 1.4,
          max_steps: int = 12, max_shed: float = 0.001,
          processes: int = 1) -> tuple[list[LoadResult], LoadResult | None]:
    """Raise the open-loop rate geometrically until p99, errors, drops or shedding (above
    `max_shed` of the events) break the target; returns every step and the best one that
    met it. Each step's spec["sweep_stop"] says why it failed ("" if it did not)."""
    steps, best, rate = [], None, start_rate
    for _ in range(max_steps):
        # At least ~300 answers a step, or "p99" is one outlier.
        duration = max(spec.duration_s, 300 / rate)
        r = run_processes(LoadSpec(**{**asdict(spec), "rate": rate, "admin_target": "",
                                      "duration_s": duration}), processes)
        steps.append(r)
        p99_ms = r.latency_us.get("p99", float("inf")) / 1000
        why = [w for w, bad in (
            (f"p99 {p99_ms:.2f} ms > {target_p99_ms:g} ms", p99_ms > target_p99_ms),
            (f"errors {r.errors}", bool(r.errors)), (f"{r.dropped} dropped", r.dropped > 0),
            (f"{r.expired} expired before sending", r.expired > 0),
            (f"{r.shed_events} events shed", r.shed_events > max_shed * max(r.events, 1)))
            if bad]
        r.spec["sweep_stop"] = "; ".join(why)
        if why:
            break
        best = r
        rate *= factor
    return steps, best

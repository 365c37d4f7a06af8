"""Lifecycle: health is NOT_SERVING until warm-up has run and again while draining, and a
stop drains the calls in flight. Real servers on 127.0.0.1:0, real gRPC clients."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import ServerThread, server_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_server import bid, tiny_events

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "adbid.v1.Bidder")


def health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_health_is_not_serving_until_warm_up_has_run(tiny_world_dir, tmp_path):
    """The port is open before warm-up; until warm-up ends, health says NOT_SERVING."""
    s = ServerThread(server_config(tiny_world_dir, ledger=tmp_path / "ledger"))
    release = threading.Event()
    real_warm_up = s.server._warm_up

    async def held_warm_up(pipeline):  # the real warm-up, once the test has looked
        await asyncio.to_thread(release.wait, 30)
        await real_warm_up(pipeline)

    s.server._warm_up = held_warm_up
    starter = threading.Thread(target=s.start, daemon=True)
    starter.start()
    try:
        wait_for(lambda: s.server.port, what="the port")
        for service in SERVICES:
            assert health(s.target, service) == NOT_SERVING
        release.set()
        starter.join(30)
        for service in SERVICES:
            assert health(s.target, service) == SERVING
    finally:
        release.set()
        starter.join(30)
        s.stop()


def test_draining_reports_not_serving_and_finishes_the_calls_in_flight(server):
    """stop(): watchers see NOT_SERVING at once and their streams end (else they would hold
    the drain); a call in flight still gets its full answer; then the server stops, before
    the grace period is up, and refuses new calls."""
    pipeline = server.server.pipeline
    real_run = pipeline.run
    entered = threading.Event()

    async def slow_run(batch, deadline):  # the real decision, 0.5 s late
        entered.set()
        await asyncio.sleep(0.5)
        return await real_run(batch, deadline)

    pipeline.run = slow_run
    events = tiny_events(32, seed=3)
    with grpc.insecure_channel(server.target) as ch, ThreadPoolExecutor(2) as pool:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="adbid.v1.Bidder"), timeout=30)
        assert next(watch).status == SERVING
        in_flight = pool.submit(bid, ch, events, "draining", 10.0)
        assert entered.wait(10), "the call never reached the decision"
        t0 = time.monotonic()
        stopping = pool.submit(server.call, server.server.stop(20.0), 60)
        assert next(watch).status == NOT_SERVING
        assert all(r.status == NOT_SERVING for r in watch)  # then the stream ends, status OK
        resp = in_flight.result(10)
        assert [d.request_id for d in resp.decisions] == [e.request_id for e in events]
        stopping.result(60)
        assert time.monotonic() - t0 < 10.0  # it ended once drained, not at the 20 s grace
    with grpc.insecure_channel(server.target) as ch, pytest.raises(grpc.RpcError) as err:
        bid(ch, tiny_events(4, seed=4), timeout=2.0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    server.loop.call_soon_threadsafe(server.loop.stop)  # stopped above: the fixture skips it
    wait_for(lambda: not server.loop.is_running(), what="the server's loop to end")

"""The load generator behind `adbid bench`, against a real server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from adbid.bench.loadgen import LoadSpec, run


@pytest.mark.parametrize("rpc", ["unary", "stream"])
@pytest.mark.parametrize("rate", [0.0, 40.0])
def test_closed_and_open_loop_over_bid_and_bidstream(server, rpc, rate):
    """Every batch sent is answered, in full, with nothing refused; on a stream the replies
    come back matched to their batches by batch_id."""
    spec = LoadSpec(target=server.target, rate=rate, concurrency=2, batch=16, deadline_ms=2000,
                    duration_s=1.0, max_requests=40, rpc=rpc, connections=2, n_users=2_000)
    r = asyncio.run(run(spec))
    assert r.errors == {}
    assert r.sent > 0 and r.answered == r.sent
    assert r.events == 16 * r.answered
    assert r.decided_events == r.events and r.bids > 0
    assert r.latency_us["p50"] > 0 and r.late == 0


def test_an_arrival_whose_deadline_passed_before_sending_is_not_sent(server):
    """Open loop: the deadline runs from the planned arrival, so a call the client could not
    send within it is counted as expired instead of being sent with a fresh deadline."""
    spec = LoadSpec(target=server.target, rate=50.0, batch=4, deadline_ms=0.001,
                    duration_s=0.5, max_requests=20)
    r = asyncio.run(run(spec))
    assert r.expired > 0 and r.sent == 0 and r.answered == 0


def test_unknown_rpc_is_refused():
    with pytest.raises(ValueError, match="rpc"):
        asyncio.run(run(LoadSpec(rpc="carrier-pigeon", duration_s=0.1)))


def test_a_call_that_starts_late_keeps_its_planned_deadline():
    """The deadline handed to the call is the planned arrival plus the deadline, however late
    the call's task starts; one that starts after it is expired and never sent."""
    from adbid.bench.loadgen import _call
    from adbid.bench.results import Recorder as _Recorder

    seen = []

    async def bid(batch_id: str, data: bytes, deadline: float):
        seen.append(deadline)
        raise TimeoutError  # counted as a missed deadline; the answer is not the point

    async def main():
        rec = _Recorder(LoadSpec(deadline_ms=50.0))
        planned = time.perf_counter()
        await asyncio.sleep(0.02)  # the task starts 20 ms after its planned arrival
        await _call(bid, ("b1", b""), rec, planned)
        await _call(bid, ("b2", b""), rec, planned - 0.05)  # its deadline has passed
        return rec, planned

    rec, planned = asyncio.run(main())
    assert seen == [pytest.approx(planned + 0.05, abs=1e-9)]
    assert rec.result.sent == 1 and rec.result.expired == 1
    assert rec.errors == {"DEADLINE_EXCEEDED": 1}


def test_the_client_times_how_long_its_own_loop_was_held(server):
    """The probe sees a stall of this client's event loop (here a 30 ms blocking call during
    the run): an answer arriving then is timed that much late by the client itself."""
    spec = LoadSpec(target=server.target, rate=20.0, batch=4, deadline_ms=2000,
                    duration_s=0.6, max_requests=20, n_users=2_000)

    async def with_a_stall():
        async def hold():
            await asyncio.sleep(0.2)
            time.sleep(0.03)
        holder = asyncio.create_task(hold())
        r = await run(spec)
        await holder
        return r

    r = asyncio.run(with_a_stall())
    assert r.errors == {} and r.answered > 0
    assert r.client_stall_max_us >= 25_000
    assert 0 < r.client_stall_p99_us <= r.client_stall_max_us

"""The dynamic batcher: when it sends a gathered batch, and that each caller gets exactly its
own decisions. The pipeline here is a recording function that answers each event with a
price made from its request id; the batcher under test is the real one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from adbid import stages
from adbid.edge.decode import make_batch
from adbid.flow.batcher import Batcher
from adbid.flow.deadlines import Timekeeper
from adbid.stages.decision import Decisions


def events(ids: list[int]):
    n = len(ids)
    z = np.zeros(n, np.int64)
    return make_batch([f"r{i}" for i in ids], [""] * n, [""] * n, z.copy(), z.copy(), z.copy(),
                      z.copy(), z.copy(), [""] * n, np.zeros(n, np.uint8), [""] * n, [], z.copy(),
                      [], z.copy(), None)


class Recorder:
    """Stands in for the pipeline: records batch sizes, holds each batch until released."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = asyncio.Event()

    async def run(self, pipeline, batch, deadline):
        self.sizes.append(len(batch))
        await self.release.wait()
        n = len(batch)
        prices = np.array([int(r[1:]) for r in batch.request_id], np.int64)
        return Decisions(bid=np.ones(n, bool), candidate=np.zeros(n, np.int32),
                         ad_row=np.zeros(n, np.int64), campaign_row=np.zeros(n, np.int32),
                         price_cpm_micros=prices, value_cpm_micros=prices,
                         score=np.zeros(n, np.float32), reason=np.zeros(n, np.int32)), None


def keeper(event_cost_s: float) -> Timekeeper:
    """A cost model that expects `event_cost_s` per event, end to end, with no scatter."""
    k = Timekeeper(default_deadline_ms=50, send_margin_ms=0)
    for _ in range(2):
        k.costs.observe(stages.TOTAL, event_cost_s, 1)
    return k


def test_an_idle_pipeline_takes_the_first_caller_at_once_and_a_busy_one_gathers():
    async def scenario():
        rec, k = Recorder(), keeper(0.001)
        b = Batcher(k, rec.run, max_events=64, parallel=1)
        pipeline = SimpleNamespace(running=0)
        first = asyncio.create_task(b.decide(events([1]), k.deadline(1000, None), pipeline))
        await asyncio.sleep(0.01)
        assert rec.sizes == [1]  # sent without waiting
        ids = [[10, 11], [20], [30, 31, 32], [40]]
        later = [asyncio.create_task(b.decide(events(i), k.deadline(1000, None), pipeline))
                 for i in ids]
        await asyncio.sleep(0.05)
        assert rec.sizes == [1]  # the pipeline is busy: they wait, gathered
        rec.release.set()
        (dec, _), *rest = await asyncio.gather(first, *later)
        assert rec.sizes == [1, 7]  # the four callers' events went as one batch
        assert dec.price_cpm_micros.tolist() == [1]
        for own, (d, _) in zip(ids, rest):
            assert d.price_cpm_micros.tolist() == own  # exactly its own decisions
        assert b.batches == 2 and b.gathered == 5

    asyncio.run(scenario())


def test_a_gathered_batch_goes_when_waiting_would_cost_its_most_urgent_member():
    async def scenario():
        rec, k = Recorder(), keeper(0.020)  # 20 ms an event: 40 ms for the two waiting
        b = Batcher(k, rec.run, max_events=64, parallel=1)
        pipeline = SimpleNamespace(running=0)
        busy = asyncio.create_task(b.decide(events([1]), k.deadline(10_000, None), pipeline))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        urgent = asyncio.create_task(b.decide(events([2]), k.deadline(60, None), pipeline))
        relaxed = asyncio.create_task(b.decide(events([3]), k.deadline(10_000, None),
                                               pipeline))
        while len(rec.sizes) < 2 and time.monotonic() - t0 < 2:
            await asyncio.sleep(0.001)
        waited = time.monotonic() - t0
        assert rec.sizes == [1, 2]  # sent although the pipeline was still busy
        assert waited < 0.060  # before the urgent member's deadline
        rec.release.set()
        await asyncio.gather(busy, urgent, relaxed)

    asyncio.run(scenario())


def test_a_full_batch_goes_at_once():
    async def scenario():
        rec, k = Recorder(), keeper(0.001)
        b = Batcher(k, rec.run, max_events=4, parallel=1)
        pipeline = SimpleNamespace(running=0)
        tasks = [asyncio.create_task(b.decide(events([i]), k.deadline(10_000, None), pipeline))
                 for i in range(5)]
        await asyncio.sleep(0.01)
        assert rec.sizes == [1, 4]  # the first at once; four more fill a batch
        rec.release.set()
        await asyncio.gather(*tasks)
        assert rec.sizes == [1, 4]

    asyncio.run(scenario())


def burst(window_s: float, callers: int = 30, gap_s: float = 0.001):
    """Callers one `gap_s` apart to a pipeline that answers at once; the batch sizes sent
    and the longest any caller waited for its answer."""
    async def scenario():
        rec, k = Recorder(), keeper(0.0001)
        rec.release.set()
        b = Batcher(k, rec.run, max_events=64, parallel=1, window_s=window_s)
        pipeline = SimpleNamespace(running=0)

        async def caller(i: int) -> float:
            t0 = time.monotonic()
            dec, _ = await b.decide(events([i]), k.deadline(10_000, None), pipeline)
            assert dec.price_cpm_micros.tolist() == [i]
            return time.monotonic() - t0

        tasks = []
        for i in range(callers):
            tasks.append(asyncio.create_task(caller(i)))
            await asyncio.sleep(gap_s)
        waits = await asyncio.gather(*tasks)
        return rec.sizes, max(waits)

    return asyncio.run(scenario())


def test_without_a_window_an_idle_pipeline_takes_each_caller_alone():
    sizes, _ = burst(window_s=0.0)
    assert sizes == [1] * 30


def test_under_load_an_idle_pipeline_waits_up_to_the_window_to_gather():
    """Callers a millisecond apart (1,000 a second) with a 20 ms window: once the rate is
    known, the idle pipeline waits for the next callers, never past the window."""
    sizes, longest = burst(window_s=0.020)
    assert sum(sizes) == 30 and max(sizes) >= 5 and len(sizes) < 15
    assert longest < 0.020 + 0.030  # the window, and the loop's slack on a busy machine


def test_a_caller_after_quiet_traffic_never_waits_for_the_window():
    """One caller every 200 ms (5 a second; under one expected in an 80 ms window, as the
    smoothed rate sees it): each is sent at once."""
    sizes, longest = burst(window_s=0.080, callers=4, gap_s=0.200)
    assert sizes == [1] * 4
    assert longest < 0.050  # not held for the 80 ms window


@pytest.mark.parametrize("window_ms", [0.0, 2.0])
def test_concurrent_openrtb_requests_are_decided_in_gathered_batches(server_factory,
                                                                     window_ms):
    """By default (no window) and with --batch-window-ms 2: the server's batcher has the
    window asked for, and concurrent requests share batches."""
    server = server_factory(batch_window_ms=window_ms)
    assert server.server.bidder.batcher.window == window_ms / 1e3
    port = server.server.openrtb_port
    request = {"id": "x", "tmax": 1000, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
               "site": {"domain": "news.example", "keywords": "football"}}
    statuses: list[int] = []

    def client(c: int) -> None:
        for i in range(15):
            body = json.dumps({**request, "id": f"c{c}-{i}"}).encode()
            r = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/openrtb2/bid", body,
                {"Content-Type": "application/json"}), timeout=10)
            statuses.append(r.status)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 120 and set(statuses) <= {200, 204}
    batcher = server.server.bidder.batcher
    assert batcher.gathered >= 120
    assert batcher.batches < batcher.gathered  # some batches held several requests

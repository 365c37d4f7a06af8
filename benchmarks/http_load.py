"""An open-loop HTTP/1.1 load generator without coordinated omission.

Requests arrive at a fixed mean rate with exponential gaps (Poisson), whatever the
server does. Each is sent on a free keep-alive connection at its planned time (a new
connection is opened when none is free, up to `max_connections`), and its latency is
taken from that planned time, so a server that falls behind shows its queueing in
the tail. Several client processes share the rate; their HDR histograms are merged.

    run(url_host, port, path, bodies, rate, duration_s, processes) -> dict
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import random
import time
from collections import Counter

from hdrh.histogram import HdrHistogram


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   head: bytes, body: bytes) -> int:
    writer.write(head + body)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _run(host: str, port: int, path: str, bodies: list[bytes], rate: float,
               duration_s: float, timeout_s: float, max_connections: int, seed: int) -> dict:
    rng = random.Random(seed)
    hist = HdrHistogram(1, 60_000_000, 3)
    statuses: Counter = Counter()
    free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = [0]
    tasks: set[asyncio.Task] = set()

    async def one(planned: float, body: bytes) -> None:
        conn = free.pop() if free else None
        try:
            if conn is None:
                if opened[0] >= max_connections:
                    statuses["no connection"] += 1
                    return
                opened[0] += 1
                conn = await asyncio.open_connection(host, port)
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            status = await asyncio.wait_for(_request(*conn, head, body), timeout_s)
            hist.record_value(max(1, int((time.perf_counter() - planned) * 1e6)))
            statuses[status] += 1
            free.append(conn)
        except (TimeoutError, OSError, ConnectionError, ValueError, IndexError):
            statuses["error"] += 1
            if conn is not None:
                conn[1].close()
                opened[0] -= 1

    gc.freeze()
    start = time.perf_counter()
    planned = start
    n = 0
    while planned - start < duration_s:
        planned += rng.expovariate(rate)
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(planned, bodies[n % len(bodies)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 1)
    for _, writer in free:
        writer.close()
    return {"sent": n, "statuses": dict(statuses), "hist": hist.encode().decode("ascii"),
            "elapsed_s": time.perf_counter() - start}


def _share(args: tuple) -> dict:
    return asyncio.run(_run(*args))


def run(host: str, port: int, path: str, bodies: list[bytes], rate: float, duration_s: float,
        processes: int = 2, timeout_s: float = 1.0, max_connections: int = 256) -> dict:
    """Offer `rate` requests/s for `duration_s`; latency percentiles in ms, by status."""
    shares = [(host, port, path, bodies, rate / processes, duration_s, timeout_s,
               max_connections // processes, seed) for seed in range(processes)]
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_share, shares)
    hist = HdrHistogram(1, 60_000_000, 3)
    statuses: Counter = Counter()
    sent = 0
    for p in parts:
        hist.add(HdrHistogram.decode(p["hist"].encode("ascii")))
        statuses.update(p["statuses"])
        sent += p["sent"]
    answered = sum(v for k, v in statuses.items() if isinstance(k, int))
    pct = {f"p{q:g}": hist.get_value_at_percentile(q) / 1000 for q in (50, 90, 99, 99.9)}
    return {"rate": rate, "sent": sent, "answered": answered, "statuses": dict(statuses),
            "requests_per_s": answered / duration_s, **pct, "max": hist.get_max_value() / 1000}

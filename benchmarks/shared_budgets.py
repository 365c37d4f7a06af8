"""Shared budgets (--redis) against budgets of its own: throughput and Redis calls per batch.

One redis-server on a free loopback port (its own temporary directory, append-only file,
fsync every second as production would run it). Then, alternating in one run, `adbid
serve` without `--redis`, with it, and with it but frequency counts kept per process
(`--no-redis-frequency`), closed loop over gRPC (batch 256, 4 callers), live traffic
(reservations and their leases), each run `--duration-s` from the world's budgets (Redis
flushed before each): goodput, bids, p99, and with Redis the script calls the server made
per batch answered and the share of the run Redis spent in them (its command statistics).

    python benchmarks/shared_budgets.py [--runs 3] [--duration-s 5] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write
from serverproc import Server, free_port

from adbid.bench.loadgen import LoadSpec, run


def script_stats(r: redis.Redis) -> tuple[int, int]:
    """Script calls so far and the microseconds Redis spent in them."""
    stats = r.info("commandstats")
    rows = [stats.get(f"cmdstat_{c}", {}) for c in ("evalsha", "eval", "evalsha_ro")]
    return sum(int(x.get("calls", 0)) for x in rows), sum(int(x.get("usec", 0)) for x in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="adbid-redis-"))
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp), "--appendonly", "yes", "--save", ""],
                            stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    url = f"redis://127.0.0.1:{port}/0"
    settings = (("own budgets", ()), ("--redis", ("--redis", url)),
                ("--redis --no-redis-frequency", ("--redis", url, "--no-redis-frequency")))
    rows: dict[str, list[dict]] = {name: [] for name, _ in settings}
    try:
        for k in range(a.runs):
            for name, args in settings:
                r.flushall()  # each run starts from the world's budgets, as the other does
                with Server(*args) as srv:
                    before, usec_before = script_stats(r)
                    res = asyncio.run(run(LoadSpec(
                        target=srv.target, concurrency=a.concurrency, batch=a.batch,
                        deadline_ms=100, duration_s=a.duration_s, seed=k,
                        connections=a.concurrency)))
                    after, usec_after = script_stats(r)
                    calls, usec = after - before, usec_after - usec_before
                d = res.as_dict()
                row = {"goodput_events_per_s": d["goodput_events_per_s"],
                       "p99_ms": res.latency_us.get("p99", 0) / 1000,
                       "batches": res.answered, "bids": res.bids, "errors": res.errors,
                       "script_calls": calls, "redis_cpu_share": usec / 1e6 / a.duration_s,
                       "calls_per_batch": calls / max(res.answered, 1)}
                rows[name].append(row)
                print(f"run {k + 1} {name}: {row['goodput_events_per_s']:,.0f} events/s, p99 "
                      f"{row['p99_ms']:.1f} ms, {res.answered} batches, {res.bids} bids, "
                      f"{calls} Redis script "
                      f"calls (start-up and stop included), "
                      f"{row['calls_per_batch']:.3f} a batch, Redis busy in them "
                      f"{row['redis_cpu_share']:.2%} of the run", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {name: [w["goodput_events_per_s"] / o["goodput_events_per_s"]
                     for o, w in zip(rows["own budgets"], rows[name])]
              for name, _ in settings[1:]}
    summary = {name: {"goodput_median": statistics.median(x["goodput_events_per_s"] for x in v),
                      "goodput_range": [min(x["goodput_events_per_s"] for x in v),
                                        max(x["goodput_events_per_s"] for x in v)]}
               for name, v in rows.items()}
    for name, _ in settings[1:]:
        cpb = [x["calls_per_batch"] for x in rows[name]]
        r = ratios[name]
        print(f"{name} / own budgets, paired runs: median {statistics.median(r):.3f} "
              f"(range {min(r):.3f}-{max(r):.3f}); Redis calls a batch: median "
              f"{statistics.median(cpb):.3f} ({min(cpb):.3f}-{max(cpb):.3f})")
    out = {"machine": machine(), "runs": rows, "ratios": ratios, "summary": summary}
    print(f"-> {write('shared_budgets', out)}")


if __name__ == "__main__":
    main()

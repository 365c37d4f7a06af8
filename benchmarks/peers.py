"""adbid against the peers a user would pick, on the same world, model and index.

For each system: an open-loop sweep (Poisson arrivals, same load generator and
deadline) to the highest rate whose p99 stays <= --target-p99-ms with nothing
shed. adbid is sent batches of --batch events as columns; the naive per-event
peer (a) one AdEvent message per call, which is its pattern.

Peers (b) NVIDIA Triton via nvidia-pytriton and (c) Ray Serve are not built
yet (see README); this script runs adbid and peer (a).

    python benchmarks/peers.py [--batch 256] [--target-p99-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402
from serverproc import Server, free_port  # noqa: E402

from adbid.config import default_world_dir  # noqa: E402
from adbid.loadgen import LoadSpec, run, sweep  # noqa: E402


def best_rate(target: str, batch: int, target_p99_ms: float, start: float, duration_s: float,
              wire: str = "columns"):
    spec = LoadSpec(target=target, batch=batch, deadline_ms=max(target_p99_ms * 3, 30),
                    duration_s=duration_s, wire=wire)
    steps, best = sweep(spec, target_p99_ms, start, factor=1.3, max_steps=16, max_shed=0.01)
    for st in steps:
        print(f"  {target}: {st.spec['rate']:7.1f} calls/s, p99 "
              f"{st.latency_us.get('p99', 0) / 1000:.2f} ms, goodput "
              f"{st.goodput_events_per_s:,.0f} events/s  {st.spec['sweep_stop']}")
    return steps, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--target-p99-ms", type=float, default=10.0)
    ap.add_argument("--duration-s", type=float, default=4.0)
    ap.add_argument("--start-rate", type=float, default=20.0,
                    help="adbid's first sweep step, calls/s (very low rates run on cold caches)")
    a = ap.parse_args()
    out = {"machine": machine(), "batch": a.batch, "target_p99_ms": a.target_p99_ms,
           "systems": {}}
    with Server() as srv:
        steps, best = best_rate(srv.target, a.batch, a.target_p99_ms, a.start_rate, a.duration_s)
        out["systems"]["adbid"] = {"best": best.as_dict() if best else None,
                                   "steps": [s.as_dict() for s in steps]}
    port = free_port()
    peer = subprocess.Popen([sys.executable, str(Path(__file__).parent / "peers" /
                                                 "naive_server.py"),
                             "--world", str(default_world_dir()), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "naive peer" in peer.stdout.readline()
        time.sleep(1)
        steps_n, best_n = best_rate(f"127.0.0.1:{port}", 1, a.target_p99_ms, 50, a.duration_s,
                                    wire="events")
        out["systems"]["naive per-event (a)"] = {"best": best_n.as_dict() if best_n else None,
                                                 "steps": [s.as_dict() for s in steps_n]}
    finally:
        peer.terminate()
        peer.wait(10)
    for name, s in out["systems"].items():
        b = s["best"]
        print(f"{name:22s}: " + (f"{b['goodput_events_per_s']:,.0f} events/s at p99 "
                                 f"{b['latency_us']['p99'] / 1000:.2f} ms" if b else
                                 "no rate met the target"))
    ours, naive = (out["systems"][k]["best"] for k in ("adbid", "naive per-event (a)"))
    if ours and naive:
        out["ratio_vs_naive"] = ours["goodput_events_per_s"] / naive["goodput_events_per_s"]
        print(f"adbid / naive = {out['ratio_vs_naive']:.1f}x")
    if naive:  # p99 at equal load: adbid offered the naive peer's best event rate
        rate = naive["goodput_events_per_s"] / a.batch
        with Server() as srv:
            r = asyncio.run(run(LoadSpec(target=srv.target, batch=a.batch, rate=rate,
                                         deadline_ms=max(a.target_p99_ms * 3, 30),
                                         duration_s=max(a.duration_s, 300 / rate))))
        out["equal_load"] = {"events_per_s": naive["goodput_events_per_s"],
                             "naive_p99_ms": naive["latency_us"]["p99"] / 1000,
                             "adbid_p99_ms": r.latency_us.get("p99", 0) / 1000,
                             "adbid_p50_ms": r.latency_us.get("p50", 0) / 1000}
        print(f"at {naive['goodput_events_per_s']:,.0f} events/s: naive p99 "
              f"{out['equal_load']['naive_p99_ms']:.2f} ms, adbid p99 "
              f"{out['equal_load']['adbid_p99_ms']:.2f} ms")
    print(f"-> {write('peers', out)}")


if __name__ == "__main__":
    main()

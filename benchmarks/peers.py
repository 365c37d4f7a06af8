"""adbid against the peers a user would pick, on the same world, model and index.

For each system: an open-loop sweep (Poisson arrivals, same load generator and
deadline) to the highest rate whose p99 stays <= --target-p99-ms with nothing
shed. adbid is sent batches of --batch events as columns; the naive per-event
peer (a) one AdEvent message per call, which is its pattern.

Peer (c), Ray Serve (`--ray`), is installed and run by `make bench-peers` only,
in its own venv and a loopback-only network namespace. Peer (b), NVIDIA Triton
via nvidia-pytriton, is not built yet (see README).

    python benchmarks/peers.py [--batch 256] [--target-p99-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
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
    ap.add_argument("--ray", action="store_true",
                    help="also peer (c), Ray Serve: needs `make bench-peers` (its venv, and a "
                         "loopback-only network namespace)")
    ap.add_argument("--start-rate", type=float, default=20.0,
                    help="adbid's first sweep step, calls/s (very low rates run on cold caches)")
    a = ap.parse_args()
    out = {"machine": machine(), "batch": a.batch, "target_p99_ms": a.target_p99_ms,
           "systems": {}}
    with Server() as srv:
        steps, best = best_rate(srv.target, a.batch, a.target_p99_ms, a.start_rate, a.duration_s)
        out["systems"]["adbid"] = {"best": best.as_dict() if best else None,
                                   "steps": [s.as_dict() for s in steps]}
    peers = [("naive per-event (a)", "naive_server.py", "naive peer", 50.0)]
    if a.ray:
        peers.append(("Ray Serve, @serve.batch (c)", "ray_peer.py", "ray peer", 10.0))
    for name, script, ready, start in peers:
        port = free_port()
        peer = subprocess.Popen([sys.executable, str(Path(__file__).parent / "peers" / script),
                                 "--world", str(default_world_dir()), "--port", str(port)],
                                stdout=subprocess.PIPE, text=True)
        try:
            line = peer.stdout.readline()
            if ready not in line:
                raise SystemExit(f"{name} did not start (exit {peer.wait(30)}): {line!r}")
            time.sleep(1)
            steps_n, best_n = best_rate(f"127.0.0.1:{port}", 1, a.target_p99_ms, start,
                                        a.duration_s, wire="events")
            out["systems"][name] = {"best": best_n.as_dict() if best_n else None,
                                    "steps": [s.as_dict() for s in steps_n]}
        finally:
            peer.send_signal(signal.SIGINT if script == "ray_peer.py" else signal.SIGTERM)
            try:
                peer.wait(60)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
    for name, s in out["systems"].items():
        b, first = s["best"], s["steps"][0] if s["steps"] else None
        print(f"{name:22s}: " + (f"{b['goodput_events_per_s']:,.0f} events/s at p99 "
                                 f"{b['latency_us']['p99'] / 1000:.2f} ms" if b else
                                 "no rate met the target" + (
                                     f" (p99 {first['latency_us'].get('p99', 0) / 1000:.2f} ms "
                                     f"at its lowest rate, {first['spec']['rate']:g} calls/s)"
                                     if first else "")))
    ours, naive = (out["systems"][k]["best"] for k in ("adbid", "naive per-event (a)"))
    for name, s in out["systems"].items():
        if name != "adbid" and ours and s["best"]:
            s["adbid_ratio"] = ours["goodput_events_per_s"] / s["best"]["goodput_events_per_s"]
            print(f"adbid / {name} = {s['adbid_ratio']:.1f}x")
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

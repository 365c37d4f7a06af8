"""Reloads under load: does loading and warming a world take serving's time?

An operator's run, against a real `adbid serve` of the demo world: light open-loop
load (default 60 batches/s of 64 events, 100 ms deadline, Poisson arrivals) for
--duration-s, once without reloads and once with --reloads reloads spread over the run
(Admin.Reload calls, as `adbid reload` sends them), alternating two copies of the demo
world (the same content in two directories, as a deploy that writes each release to a
new directory would). Reported
for each: calls answered, failed (by status), late at the client, batches shed, p50/p99;
and the ratio of the two p99s (target: 0 failed or late calls, p99 within 1.5x).

    python benchmarks/reload_under_load.py [--duration-s 55] [--reloads 50] [--rate 60]
        [--batch 64] [--deadline-ms 100] [--repeats 1] [--world DIR] [--other DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import grpc
from common import machine, write
from serverproc import Server

from adbid.bench.loadgen import LoadSpec, run_processes
from adbid.config import default_world_dir
from adbid.v1 import admin_pb2, admin_pb2_grpc


def reloader(admin_target: str, worlds: list[Path], count: int, every_s: float,
             stop: threading.Event, out: dict) -> None:
    """`count` reloads, one every `every_s`, alternating `worlds`; counts what failed."""
    out.update(ok=0, failed=0, ms=[])
    with grpc.insecure_channel(admin_target) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        for i in range(count):
            if stop.wait(every_s):
                break
            t0 = time.perf_counter()
            try:
                admin.Reload(admin_pb2.ReloadRequest(world_path=str(worlds[i % len(worlds)])),
                             timeout=120)
                out["ok"] += 1
            except grpc.RpcError as exc:
                out["failed"] += 1
                print(f"  reload {i} failed: {exc.code().name}: {exc.details()}")
            out["ms"].append((time.perf_counter() - t0) * 1000)


def one_run(srv: Server, spec: LoadSpec, reloads: int, worlds: list[Path]) -> dict:
    stop = threading.Event()
    done: dict = {}
    thread = threading.Thread(target=reloader, args=(
        srv.admin_target, worlds, reloads, spec.duration_s / (reloads + 2), stop, done))
    if reloads:
        thread.start()
    late_before = srv.metric("adbid_late_answers_total")
    r = run_processes(spec, 1)
    stop.set()
    if reloads:
        thread.join(180)
    row = {"reloads": reloads, "reloads_ok": done.get("ok", 0),
           "reloads_failed": done.get("failed", 0),
           "reload_ms_median": sorted(done["ms"])[len(done["ms"]) // 2] if done.get("ms") else 0,
           "answered": r.answered, "errors": r.errors, "failed_calls": sum(r.errors.values()),
           "late_client": r.late, "withheld_late_server":
               srv.metric("adbid_late_answers_total") - late_before,
           "shed_events": r.shed_events, "p50_ms": r.latency_us.get("p50", 0) / 1000,
           "p99_ms": r.latency_us.get("p99", 0) / 1000}
    print(f"  {reloads:3d} reloads ({row['reloads_ok']} ok, median "
          f"{row['reload_ms_median']:.0f} ms): {r.answered} answered, failed {r.errors or 0}, "
          f"late {r.late}, shed events {r.shed_events}, p50 {row['p50_ms']:.1f} ms, "
          f"p99 {row['p99_ms']:.1f} ms")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=55.0)
    ap.add_argument("--reloads", type=int, default=50)
    ap.add_argument("--rate", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--deadline-ms", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (each pair: without "
                    "reloads, then with them)")
    ap.add_argument("--world", type=Path, default=default_world_dir())
    ap.add_argument("--other", type=Path, default=None,
                    help="alternate with this world instead of a copy of --world (another "
                         "model and index: the full load; its campaigns must extend --world's)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adbid-reload-"))
    worlds = [tmp / "a", tmp / "b"]
    for w, source in zip(worlds, (a.world, a.other or a.world)):
        shutil.copytree(source, w)
    pairs = []
    try:
        with Server("--world", str(worlds[0])) as srv:
            for k in range(a.repeats):
                spec = LoadSpec(target=srv.target, rate=a.rate, batch=a.batch,
                                deadline_ms=a.deadline_ms, duration_s=a.duration_s,
                                n_users=100_000, seed=100 + k)
                base = one_run(srv, spec, 0, worlds)
                loaded = one_run(srv, spec, a.reloads, worlds)
                ratio = loaded["p99_ms"] / base["p99_ms"] if base["p99_ms"] else 0.0
                print(f"pair {k + 1}: p99 with reloads / without = {ratio:.2f}")
                pairs.append({"without": base, "with": loaded, "p99_ratio": ratio})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"machine": machine(), "rate": a.rate, "batch": a.batch,
           "other": str(a.other) if a.other else None,
           "deadline_ms": a.deadline_ms, "duration_s": a.duration_s, "reloads": a.reloads,
           "pairs": pairs}
    print(f"-> {write('reload_under_load', out)}")


if __name__ == "__main__":
    main()

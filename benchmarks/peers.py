"""adbid against the peers a user would pick, on the same world, model and index.

For each system: an open-loop sweep (Poisson arrivals, same load generator and
deadline) to the highest rate whose p99 stays <= --target-p99-ms with nothing
shed. adbid is sent batches of --batch events as columns; the naive per-event
peer (a) one AdEvent message per call, which is its pattern.

Peers (b), NVIDIA Triton through nvidia-pytriton (`--triton`), and (c), Ray Serve
(`--ray`), are installed and run by `make bench-peers` only: Ray in .venv-peers,
Triton in .venv-triton (it needs numpy < 2) behind a Bidder front in .venv-peers,
the whole comparison in a loopback-only network namespace. They are sent the same
calls as adbid, --batch events each, as AdEvent messages (adbid: columns), and gather
the events of concurrent calls with their own batchers; `--batch 1` compares
single-event calls through adbid's batcher with theirs. The naive peer gets one event
a call, its pattern.

    python benchmarks/peers.py [--batch 256] [--target-p99-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write
from serverproc import Server, free_port

from adbid.bench.loadgen import LoadSpec, run, sweep
from adbid.config import default_world_dir


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


PEERS = Path(__file__).parent / "peers"
TRITON_PYTHON = Path(__file__).parent.parent / ".venv-triton" / "bin" / "python"


def start(cmd: list[str], ready: str, env: dict | None = None) -> subprocess.Popen:
    """Start a peer process (its own process group) and wait for its ready line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    line = proc.stdout.readline()
    while line and ready not in line:
        line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{cmd[1]} did not start (exit {proc.wait(30)})")
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal a peer, then its whole process group if it lingers (Triton and Ray have
    server processes of their own)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def launch(kind: str, port: int, workspace: Path) -> list[tuple[subprocess.Popen, int]]:
    """A peer's processes, first to last, each with the signal that stops it cleanly."""
    world = str(default_world_dir())
    if kind == "triton":
        # PyTriton's backend loads libpython from the interpreter's lib directory.
        lib = subprocess.run([str(TRITON_PYTHON), "-c", "import sysconfig; print(sysconfig."
                              "get_config_var('LIBDIR'))"], capture_output=True, text=True,
                             check=True).stdout.strip()
        env = {**os.environ, "LD_LIBRARY_PATH": lib, "PYTHONPATH": str(PEERS.parent.parent)}
        triton = start([str(TRITON_PYTHON), str(PEERS / "triton_peer.py"), "--world", world,
                        "--port", str(port + 10), "--workspace", str(workspace)],
                       "triton peer on", env)
        front = start([sys.executable, str(PEERS / "triton_front.py"), "--port", str(port),
                       "--triton-port", str(port + 10), "--world", world], "triton front on")
        return [(triton, signal.SIGINT), (front, signal.SIGTERM)]
    script, ready, sig = {"naive": ("naive_server.py", "naive peer", signal.SIGTERM),
                          "ray": ("ray_peer.py", "ray peer", signal.SIGINT)}[kind]
    return [(start([sys.executable, str(PEERS / script), "--world", world, "--port",
                    str(port)], ready), sig)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--target-p99-ms", type=float, default=10.0)
    ap.add_argument("--duration-s", type=float, default=4.0)
    ap.add_argument("--ray", action="store_true",
                    help="also peer (c), Ray Serve: needs `make bench-peers` (its venv, and a "
                         "loopback-only network namespace)")
    ap.add_argument("--triton", action="store_true",
                    help="also peer (b), NVIDIA Triton via nvidia-pytriton: needs `make "
                         "bench-peers` (.venv-triton)")
    ap.add_argument("--start-rate", type=float, default=20.0,
                    help="adbid's first sweep step, calls/s (very low rates run on cold caches)")
    a = ap.parse_args()
    out = {"machine": machine(), "batch": a.batch, "target_p99_ms": a.target_p99_ms,
           "systems": {}}
    with Server() as srv:
        steps, best = best_rate(srv.target, a.batch, a.target_p99_ms, a.start_rate, a.duration_s)
        out["systems"]["adbid"] = {"best": best.as_dict() if best else None,
                                   "steps": [s.as_dict() for s in steps]}
    peers = [("naive per-event (a)", "naive", 50.0, 1)]  # first rate: events/s
    if a.triton:
        peers.append(("Triton, PyTriton (b)", "triton", 10.0, a.batch))
    if a.ray:
        peers.append(("Ray Serve, @serve.batch (c)", "ray", 10.0, a.batch))
    for name, kind, first_rate, batch in peers:
        port = free_port()
        scratch = Path(tempfile.mkdtemp(prefix="adbid-peer-"))
        procs = launch(kind, port, scratch / "pytriton")  # PyTriton makes its workspace
        try:
            time.sleep(1)
            steps_n, best_n = best_rate(f"127.0.0.1:{port}", batch, a.target_p99_ms,
                                        max(first_rate / batch, 1.0), a.duration_s,
                                        wire="events")
            out["systems"][name] = {"best": best_n.as_dict() if best_n else None,
                                    "steps": [s.as_dict() for s in steps_n]}
            naive = out["systems"]["naive per-event (a)"]["best"]
            if kind != "naive" and naive:  # p99 at equal load: the naive peer's best rate
                rate = naive["goodput_events_per_s"]
                spec = LoadSpec(target=f"127.0.0.1:{port}", batch=batch, rate=rate / batch,
                                wire="events",
                                duration_s=min(max(a.duration_s, 300 * batch / rate), 60),
                                deadline_ms=max(a.target_p99_ms * 3, 30))
                r = asyncio.run(run(spec))
                out["systems"][name]["equal_load"] = {
                    "events_per_s": rate, "p50_ms": r.latency_us.get("p50", 0) / 1000,
                    "p99_ms": r.latency_us.get("p99", 0) / 1000, "errors": r.errors}
                p50 = r.latency_us.get("p50", 0) / 1000
                print(f"  {name} at {rate:,.0f} events/s: p50 {p50:.2f}"
                      f" ms, p99 {r.latency_us.get('p99', 0) / 1000:.2f} ms, errors {r.errors}")
        finally:
            for proc, sig in reversed(procs):
                stop(proc, sig)
            shutil.rmtree(scratch, ignore_errors=True)  # PyTriton must start afresh
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

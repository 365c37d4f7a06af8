"""OpenRTB over HTTP, single-imp requests, open loop: adbid against the HTTP floor.

In one run, on the same cores as the load generator (benchmarks/http_load.py: Poisson
arrivals, latency from the planned arrival, two client processes):
  (a) the floor: an HTTP echo server (benchmarks/echo_app.py) on uvicorn + httptools + uvloop,
      and the same app on granian, the two candidate stacks;
  (b) adbid serve with the dynamic batcher (the default);
  (c) adbid serve --no-batcher (one pipeline call per request);
  and with --window-ms W, (b) again with `--batch-window-ms W` (the batcher may wait up
  to W ms for more callers under load).
Each is swept from --start-rate (x1.4 a step, then --refine bisection steps) to the
highest rate whose p99 stays within --target-p99-ms with at least 99% answered; then adbid with and
without the batcher are run at --low-rate for the batcher's cost at low load. Each step
also reports the server's CPU per request (all its processes) and adbid's mean gathered
batch, which split a request's cost into its own part and its share of a batch.

    python benchmarks/openrtb.py [--target-p99-ms 20] [--duration-s 5] [--start-rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write
from http_load import run
from serverproc import Server, free_port

HERE = Path(__file__).parent


def bodies(n: int = 64) -> list[bytes]:
    words = ("football soccer", "tennis racket", "running marathon", "recipes cooking",
             "wine vineyard", "coffee espresso", "cycling bike", "vegan plantbased")
    return [json.dumps({
        "id": f"bench-{i}", "tmax": 60, "at": 1,
        "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}]}, "bidfloor": 0.1}],
        "site": {"domain": f"site{i % 50}.example", "keywords": words[i % len(words)]},
        "device": {"devicetype": 2, "geo": {"country": "USA"}},
        "user": {"buyeruid": f"u{i * 997 % 100_000:07d}"}}).encode() for i in range(n)]


class Echo:
    """The echo app on one server stack, in a process of its own."""

    def __init__(self, stack: str) -> None:
        self.port = free_port()
        cmd = {"uvicorn": [sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop",
                           "uvloop", "--no-access-log", "--log-level", "warning",
                           "--port", str(self.port), "echo_app:app"],
               "granian": [sys.executable, "-m", "granian", "--interface", "asgi",
                           "--workers", "1", "--log-level", "warning", "--port",
                           str(self.port), "echo_app:app"]}[stack]
        self.proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{self.port}/", b"{}", method="POST"), timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{stack} echo did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and of its live descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def sweep(port: int, path: str, a, label: str, pid: int, server: Server | None = None) -> dict:
    """x1.4 a step to the first rate that fails, then --refine bisection steps between
    the last rate that held and that one. Each step also reports the server's CPU per
    answered request (all its processes) and, for adbid, the dynamic batcher's mean batch
    (requests a pipeline batch)."""
    rate, best, steps, failed, refine = a.start_rate, None, [], None, a.refine
    while rate <= a.max_rate:
        cpu0 = cpu_s(pid)
        gathered0 = (server.metric("adbid_batcher_batch_events_sum"),
                     server.metric("adbid_batcher_batch_events_count")) if server else (0, 0)
        r = run("127.0.0.1", port, path, BODIES, rate, a.duration_s)
        r["server_cpu_us_per_request"] = (cpu_s(pid) - cpu0) / max(r["answered"], 1) * 1e6
        if server is not None:
            events = server.metric("adbid_batcher_batch_events_sum") - gathered0[0]
            batches = server.metric("adbid_batcher_batch_events_count") - gathered0[1]
            r["batcher_mean_batch"] = events / batches if batches else None
        steps.append(r)
        ok = r["p99"] <= a.target_p99_ms and r["answered"] >= 0.99 * r["sent"]
        print(f"  {label} at {rate:,.0f}/s: answered {r['requests_per_s']:,.0f}/s, p50 "
              f"{r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, server CPU "
              f"{r['server_cpu_us_per_request']:.0f} us a request"
              + (f", batches of {r['batcher_mean_batch']:.1f}"
                 if r.get("batcher_mean_batch") else "")
              + f", statuses {r['statuses']}", flush=True)
        if ok:
            best = r
        else:
            failed = rate
        if failed is None:
            rate *= 1.4
            continue
        if refine <= 0 or best is None:
            break
        refine -= 1
        rate = (best["rate"] + failed) / 2
    return {"best": best, "steps": steps}


BODIES = bodies()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target-p99-ms", type=float, default=20.0)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--start-rate", type=float, default=100.0)
    ap.add_argument("--max-rate", type=float, default=30_000.0)
    ap.add_argument("--refine", type=int, default=2,
                    help="bisection steps between the last rate that held and the first that "
                    "failed")
    ap.add_argument("--low-rate", type=float, default=30.0)
    ap.add_argument("--skip-granian", action="store_true")
    ap.add_argument("--skip-workers", action="store_true",
                    help="leave out adbid --workers 2 --native-threads 1")
    ap.add_argument("--window-ms", type=float, default=0.0,
                    help="also run adbid with the batcher and --batch-window-ms this (0: not)")
    a = ap.parse_args()
    out: dict = {"machine": machine(), "args": vars(a), "systems": {}}
    for stack in ("uvicorn", *(() if a.skip_granian else ("granian",))):
        echo = Echo(stack)
        try:
            out["systems"][f"echo ({stack})"] = sweep(echo.port, "/", a, f"echo {stack}",
                                                      echo.proc.pid)
        finally:
            echo.stop()
    variants = [("adbid, batcher", ()), ("adbid, no batcher", ("--no-batcher",))]
    if a.window_ms > 0:
        variants.append(("adbid, batcher, window", ("--batch-window-ms", str(a.window_ms))))
    if not a.skip_workers:
        variants.append(("adbid, batcher, 2 workers", ("--workers", "2", "--native-threads", "1")))
    for label, flags in variants:
        port = free_port()
        with Server("--openrtb-port", str(port), *flags) as server:
            out["systems"][label] = sweep(port, "/openrtb2/bid", a, label, server.proc.pid,
                                          server)
            low = run("127.0.0.1", port, "/openrtb2/bid", BODIES, a.low_rate, a.duration_s)
            out["systems"][label]["low_load"] = low
            print(f"  {label} at {a.low_rate:g}/s: p50 {low['p50']:.2f} ms, p99 "
                  f"{low['p99']:.2f} ms", flush=True)

    def best(name: str) -> float:
        b = out["systems"].get(name, {}).get("best")
        return b["requests_per_s"] if b else 0.0

    floor = max(best("echo (uvicorn)"), best("echo (granian)"))
    with_b, without = best("adbid, batcher"), best("adbid, no batcher")
    workers = best("adbid, batcher, 2 workers")
    window = best("adbid, batcher, window")
    lows = [out["systems"][k]["low_load"]["p50"] for k in ("adbid, batcher", "adbid, no batcher")]
    out["summary"] = {"floor_rps": floor, "batcher_rps": with_b, "no_batcher_rps": without,
                      "adbid_over_floor": with_b / floor if floor else None,
                      "batcher_over_no_batcher": with_b / without if without else None,
                      "low_load_p50_added_ms": lows[0] - lows[1], "workers_rps": workers,
                      "workers_over_floor": workers / floor if floor else None,
                      "window_ms": a.window_ms, "window_rps": window,
                      "window_over_no_batcher": window / without if without else None}
    print(f"at p99 <= {a.target_p99_ms:g} ms: echo uvicorn {best('echo (uvicorn)'):,.0f}/s, "
          f"echo granian {best('echo (granian)'):,.0f}/s; adbid with the batcher "
          f"{with_b:,.0f}/s ({out['summary']['adbid_over_floor'] or 0:.0%} of the floor), "
          f"without {without:,.0f}/s; with 2 workers {workers:,.0f}/s ("
          f"{workers / floor if floor else 0:.0%}); the batcher adds {lows[0] - lows[1]:+.2f} "
          f"ms to p50 at {a.low_rate:g}/s"
          + (f"; with a {a.window_ms:g} ms window {window:,.0f}/s ("
             f"{window / floor if floor else 0:.0%} of the floor, "
             f"{window / without if without else 0:.1f}x no batcher)" if a.window_ms > 0 else ""))
    print(f"-> {write('openrtb', out)}")


if __name__ == "__main__":
    main()

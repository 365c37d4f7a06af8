"""Overload: 1x, 2x and 4x the sustainable load against a real server.

The sustainable rate is the highest open-loop rate (Poisson arrivals) whose p99
stays inside the deadline with nothing shed, found by a sweep. Each load level
then runs for --duration-s and reports: answered p50/p99, calls that missed
their deadline (DEADLINE_EXCEEDED at the client), answers the server had ready
only after they had to leave (the deadline less its send margin) and withheld
(adbid_late_answers_total; their bids withdrawn), answers that reached the
client after their deadline (from the planned arrival; must be 0) and how late
the latest was, calls whose deadline passed in the client before they could be
sent, shed events, and goodput (events decided in full per second). Each call's
gRPC deadline runs from its planned arrival, taken as the call starts.

    python benchmarks/overload.py [--batch 64] [--deadline-ms 50] [--duration-s 10] [--workers N]
        [--send-margin-ms M] [--server-nice N] [--server-cpus 0-1 --client-cpus 2-13]

Each client process also probes its own event loop ("client loop stalls": how late a
2 ms sleep wakes): an answer that comes in while the client's loop is held is timed
late by the client. An answer with status OK had reached the client's gRPC core
before the call's deadline timer ended it.

By default the clients run on the same cores as the server, and on 2 shared cores a
few answers a run reach them late at 4× whatever the margin (docs/performance.md).
`--server-nice 5` lets them run first, as an exchange on its own machine would;
`--server-cpus` and `--client-cpus` keep them on separate cores instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write
from serverproc import Server, cpu_list

from adbid.bench.loadgen import LoadSpec, run_processes, sweep
from adbid.config import ServerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--deadline-ms", type=float, default=50.0)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--start-rate", type=float, default=10.0)
    ap.add_argument("--base-rate", type=float, default=0.0,
                    help="batches/s taken as 1x (skips the sweep)")
    ap.add_argument("--workers", type=int, default=1,
                    help="serve with `adbid serve --workers N --native-threads 1` when N > 1")
    ap.add_argument("--clients", type=int, default=2,
                    help="client processes sharing the load (one saturates at a few hundred "
                         "calls/s)")
    ap.add_argument("--send-margin-ms", type=float, default=None,
                    help="the server's --send-margin-ms (its default when not given): time kept "
                         "back for the answer's way to the client")
    ap.add_argument("--server-nice", type=int, default=0,
                    help="run the server at this niceness, so that the clients on the same "
                         "cores (standing in for an exchange's own machine) are not starved by it")
    ap.add_argument("--server-cpus", type=cpu_list, default=None, metavar="LIST",
                    help="pin the server (every thread and worker) to these CPUs, e.g. 0 or 0-1")
    ap.add_argument("--client-cpus", type=cpu_list, default=None, metavar="LIST",
                    help="pin the load generator's processes to these CPUs; with --server-cpus "
                         "on other cores this stands in for an exchange on its own machine")
    ap.add_argument("--serve-args", default="",
                    help="more flags for `adbid serve`, e.g. \"--gpu-io plain\"")
    ap.add_argument("--max-shed", type=float, default=0.01,
                    help="share of events a sustainable rate may shed")
    a = ap.parse_args()
    args = ("--workers", str(a.workers), "--native-threads", "1") if a.workers > 1 else ()
    if a.send_margin_ms is not None:
        args += ("--send-margin-ms", str(a.send_margin_ms))
    args += tuple(a.serve_args.split())
    if a.server_cpus and a.client_cpus and a.server_cpus & a.client_cpus:
        raise SystemExit("--server-cpus and --client-cpus overlap")
    with Server(*args, nice=a.server_nice, cpus=a.server_cpus) as srv:
        if a.client_cpus:  # the client processes are started from this one and inherit it
            os.sched_setaffinity(0, a.client_cpus)
        # SO_REUSEPORT spreads connections, not calls: several per worker even them out.
        spec = LoadSpec(target=srv.target, batch=a.batch, deadline_ms=a.deadline_ms,
                        duration_s=min(a.duration_s, 5.0),
                        connections=max(4, 4 * a.workers, a.clients))
        steps, best = ([], None) if a.base_rate else sweep(
            spec, a.deadline_ms, a.start_rate, factor=1.3, max_steps=20, max_shed=a.max_shed,
            processes=a.clients)
        for st in steps:
            print(f"  sweep {st.spec['rate']:6.1f}/s: p99 {st.latency_us.get('p99', 0) / 1000:.2f}"
                  f" ms, goodput {st.goodput_events_per_s:,.0f} events/s"
                  f"{'  stop: ' + st.spec['sweep_stop'] if st.spec['sweep_stop'] else ''}")
        if a.base_rate:
            sustainable = a.base_rate
            print(f"1x = {sustainable:.0f} batches/s of {a.batch} (given)")
        elif best is None:
            raise SystemExit(f"no rate met p99 <= {a.deadline_ms} ms")
        else:
            sustainable = best.spec["rate"]
            print(f"sustainable: {sustainable:.0f} batches/s of {a.batch} "
                  f"({best.goodput_events_per_s:,.0f} events/s), p99 "
                  f"{best.latency_us['p99'] / 1000:.2f} ms")
        runs = []
        for mult in (1, 2, 4):
            late_before = srv.metric("adbid_late_answers_total")
            r = run_processes(LoadSpec(**{**spec.__dict__, "rate": sustainable * mult,
                                          "duration_s": a.duration_s, "seed": 10 + mult}),
                              a.clients)
            late = srv.metric("adbid_late_answers_total") - late_before
            d = r.as_dict()
            row = {"load": f"{mult}x", "offered_batches_per_s": sustainable * mult,
                   "answered": r.answered, "p50_ms": r.latency_us.get("p50", 0) / 1000,
                   "p99_ms": r.latency_us.get("p99", 0) / 1000,
                   "missed_deadline": r.errors.get("DEADLINE_EXCEEDED", 0),
                   "withheld_late_server": late, "late_answers_client": r.late,
                   "late_by_max_ms": r.late_by_max_us / 1000,
                   "errors": r.errors, "dropped": r.dropped, "expired_before_send": r.expired,
                   "shed_events": r.shed_events, "goodput_events_per_s": d["goodput_events_per_s"],
                   "client_lag_p99_ms": r.client_lag_p99_us / 1000,
                   "client_stall_p99_ms": r.client_stall_p99_us / 1000,
                   "client_stall_max_ms": r.client_stall_max_us / 1000}
            runs.append(row)
            print(f"{mult}x: offered {sustainable * mult:6.0f}/s, answered p50 {row['p50_ms']:.2f}"
                  f" ms, p99 {row['p99_ms']:.2f} ms, missed deadline {row['missed_deadline']},"
                  f" withheld late (server) {late:.0f}, late (client) {r.late}"
                  f"{f' (at most {r.late_by_max_us / 1000:.1f} ms late)' if r.late else ''}"
                  f", expired in the client "
                  f"{r.expired}, refused "
                  f"{r.errors.get('RESOURCE_EXHAUSTED', 0)}, shed {r.shed_events:,}, goodput "
                  f"{row['goodput_events_per_s']:,.0f} events/s, client lag p99 "
                  f"{row['client_lag_p99_ms']:.1f} ms, client loop stalls p99 "
                  f"{row['client_stall_p99_ms']:.1f} ms, max {row['client_stall_max_ms']:.1f} ms")
        margin = ServerConfig.send_margin_ms if a.send_margin_ms is None else a.send_margin_ms
        out = {"machine": machine(), "workers": a.workers, "serve_args": a.serve_args,
               "send_margin_ms": margin,
               "server_nice": a.server_nice, "server_cpus": sorted(a.server_cpus or ()),
               "client_cpus": sorted(a.client_cpus or ()), "batch": a.batch,
               "deadline_ms": a.deadline_ms, "sustainable_batches_per_s": sustainable,
               "sweep": [s.as_dict() for s in steps], "runs": runs}
        print(f"-> {write('overload', out)}")


if __name__ == "__main__":
    main()

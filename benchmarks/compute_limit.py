"""The compute limit: the bare native work per batch, and the server measured against it.

In-process, on the same demo-world batches and thread settings as the server
(FAISS 1 OpenMP thread, onnxruntime 1 intra-op thread): FAISS search +
onnxruntime run + the compiled decision loop, nothing else. That is what a
perfect server would spend per batch; its events/s on one core is the ceiling
the server is measured against. The same work on the server's native threads at once (2)
gives the machine's own ceiling, by the wall clock; the client shares those cores.

Then real `adbid serve` processes, a fresh one for each run, are driven closed-loop
over gRPC (client in this process, on the same 2 cores): concurrency 1 gives the server's own
per-stage costs without contention (a batch alone is split over the native threads,
so the overhead is taken from a second server that does not split), concurrency
--concurrency its throughput
(columnar requests as Bid calls and on BidStreams, and per-event messages for
comparison); then `adbid serve
--workers N --native-threads 1` at 1.5 times the concurrency. The servers run with
--overfetch 1 (no second looks) unless --second-looks is given. Reported: compute-limit
events/s, server events/s and their ratio, the server's overhead per event (everything
but the three native calls), and the p50 at one caller against the native work plus the
gRPC echo floor's p50 at one caller (benchmarks/grpc_floor.py), measured in the same run.

    python benchmarks/compute_limit.py [--batch 256] [--duration-s 6] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_inputs, machine, write
from grpc_floor import one_caller_p50_ms
from serverproc import Server

from adbid._fpmode import flush_denormals
from adbid.bench.loadgen import LoadSpec, run, server_stages
from adbid.config import ServerConfig, default_world_dir
from adbid.money.ledger import SpendLedger
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.world.artifacts import World


def native_costs(batch: int, repeats: int, threads: int) -> dict:
    flush_denormals()  # as on the server's native threads
    world = World.load(default_world_dir())
    cfg = ServerConfig(world=world.path, ledger=None)
    p = Pipeline(WorldStages(world, cfg), cfg, SpendLedger(world.campaigns, None))
    inputs = demo_inputs(p, batch)
    per = {"retrieval": [], "scoring": [], "decision": []}
    for _ in range(repeats):
        for b, q, u, c in inputs:
            t0 = time.perf_counter()
            cand = p.retriever.search(q)
            t1 = time.perf_counter()
            score = p.scorer.score(u, c, b.device_type, cand)
            t2 = time.perf_counter()
            p.core.decide(b, cand, score)
            t3 = time.perf_counter()
            per["retrieval"].append(t1 - t0)
            per["scoring"].append(t2 - t1)
            per["decision"].append(t3 - t2)
    out = {k: {"median_us": statistics.median(v) * 1e6, "min_us": min(v) * 1e6,
               "max_us": max(v) * 1e6} for k, v in per.items()}
    native = sum(out[k]["median_us"] for k in out)
    out["native_us_per_batch"] = native
    out["compute_limit_events_per_s_1core"] = batch / native * 1e6
    out["threads"] = threads
    out[f"compute_limit_events_per_s_{threads}_threads"] = parallel_limit(p, inputs, repeats,
                                                                         threads)
    return out


def parallel_limit(p: Pipeline, inputs: list, repeats: int, threads: int) -> float:
    """Events/s of the same native work on `threads` threads at once (the server's native
    threads), by the wall clock: what the cores give together, whatever they share (an SMT
    sibling, caches, memory). The decision loop is serialized, as on the server's event loop."""
    lock = threading.Lock()

    def work() -> int:
        n = 0
        for _ in range(repeats):
            for b, q, u, c in inputs:
                cand = p.retriever.search(q)
                score = p.scorer.score(u, c, b.device_type, cand)
                with lock:
                    p.core.decide(b, cand, score)
                n += len(b)
        return n

    with ThreadPoolExecutor(threads, initializer=flush_denormals) as pool:
        t0 = time.perf_counter()
        events = sum(pool.map(lambda _: work(), range(threads)))
        return events / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--duration-s", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--deadline-ms", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="runs per setting (median and range)")
    ap.add_argument("--second-looks", action="store_true",
                    help="serve with second looks (the server's default --overfetch 8) instead "
                         "of --overfetch 1")
    a = ap.parse_args()
    threads = ServerConfig().native_threads
    limit = native_costs(a.batch, a.repeats, threads)
    ceiling2 = limit[f"compute_limit_events_per_s_{threads}_threads"]
    print(f"native per batch of {a.batch}: retrieval {limit['retrieval']['median_us']:.0f} us, "
          f"scoring {limit['scoring']['median_us']:.0f} us, decision "
          f"{limit['decision']['median_us']:.0f} us -> compute limit "
          f"{limit['compute_limit_events_per_s_1core']:,.0f} events/s on one core, "
          f"{ceiling2:,.0f} on {threads} threads at once")
    result = {"machine": machine(), "batch": a.batch, "native": limit, "server": {},
              "second_looks": a.second_looks}

    def load(name: str, conc: int, *server_args: str, wire: str = "columns",
             rpc: str = "unary") -> dict:
        """--runs runs, each on a fresh server (a server keeps every live bid of a run open,
        no notice closing it, and a later run would pay for them), after a second of
        warm-up; the median one (by goodput) stands for the setting, with the range."""
        runs = []
        for k in range(a.runs):
            with Server(*server_args) as srv:
                spec = LoadSpec(target=srv.target, concurrency=conc, batch=a.batch,
                                deadline_ms=a.deadline_ms, duration_s=a.duration_s,
                                seed=conc * 10 + k, wire=wire, rpc=rpc, connections=max(4, conc))
                asyncio.run(run(replace(spec, duration_s=1.0, seed=spec.seed + 1000)))
                r = asyncio.run(run(spec)).as_dict()
                r["server_stage_stats"] = asyncio.run(server_stages(srv.admin_target))
            runs.append(r)
        runs.sort(key=lambda d: d["goodput_events_per_s"])
        d = runs[len(runs) // 2]
        rates = [x["goodput_events_per_s"] for x in runs]
        result["server"][name] = {"run": d, "goodput_range": [rates[0], rates[-1]],
                                  "runs": runs, "stages": d["server_stage_stats"]}
        print(f"{name}: {d['goodput_events_per_s']:,.0f} events/s decided (median of {a.runs}; "
              f"{rates[0]:,.0f}-{rates[-1]:,.0f}), p50 {d['latency_us'].get('p50', 0) / 1000:.2f}"
              f" ms, p99 {d['latency_us'].get('p99', 0) / 1000:.2f} ms, shed "
              f"{d['shed_events']}, errors {d['errors']}")
        return d

    # Without second looks (--overfetch 1): they are native work beyond the one pass the
    # compute limit counts (a deeper search and a second scoring for the events refused
    # for their candidates); `--second-looks` keeps the server's default.
    extra = () if a.second_looks else ("--overfetch", "1")
    load("1 process, c=1", 1, *extra)
    one = load(f"1 process, c={a.concurrency}", a.concurrency, *extra)
    events = load(f"1 process, c={a.concurrency}, events wire", a.concurrency, *extra,
                  wire="events")
    stream = load(f"1 process, c={a.concurrency}, BidStream", a.concurrency, *extra,
                  rpc="stream")
    # The overhead from the stage timers of batches that were not split over the native
    # threads: a split batch's retrieval and scoring times are its parts' summed (the work,
    # as the cost model learns it), not the wall time they took together.
    load("1 process, c=1, not split", 1, "--split-events", "0", *extra)
    s = result["server"]["1 process, c=1, not split"]["stages"]
    conc = a.concurrency * 3 // 2
    many = load(f"{a.workers} workers, c={conc}", conc, "--workers", str(a.workers),
                "--native-threads", "1", *extra)
    total = s["total"]["mean_us"]
    native_in_server = s["retrieval"]["mean_us"] + s["scoring"]["mean_us"] + \
        limit["decision"]["median_us"]
    overhead = (total - native_in_server) / a.batch
    ceiling = limit["compute_limit_events_per_s_1core"]
    best = max(one["goodput_events_per_s"], many["goodput_events_per_s"],
               stream["goodput_events_per_s"])
    # Latency at one caller against what it cannot go below: the native work, plus the
    # gRPC echo floor at one caller (benchmarks/grpc_floor.py), measured now.
    floor_ms = one_caller_p50_ms(a.batch, a.duration_s)
    native_ms = sum(limit[k]["median_us"] for k in ("retrieval", "scoring", "decision")) / 1e3
    p50_c1 = result["server"]["1 process, c=1"]["run"]["latency_us"].get("p50", 0) / 1e3
    print(f"one caller: p50 {p50_c1:.2f} ms against native work {native_ms:.2f} + gRPC echo "
          f"floor p50 {floor_ms:.2f} + 0.5 = {native_ms + floor_ms + 0.5:.2f} ms "
          f"({p50_c1 - native_ms - floor_ms:+.2f} ms above the two)")
    result["summary"] = {
        "one_caller_p50_ms": p50_c1, "native_ms_per_batch": native_ms,
        "grpc_echo_floor_p50_ms": floor_ms,
        "compute_limit_events_per_s_1core": ceiling,
        "server_events_per_s_1_process": one["goodput_events_per_s"],
        "server_events_per_s_events_wire": events["goodput_events_per_s"],
        "server_events_per_s_stream": stream["goodput_events_per_s"],
        f"server_events_per_s_{a.workers}_workers": many["goodput_events_per_s"],
        "fraction_of_limit_1core": best / ceiling,
        f"compute_limit_events_per_s_{threads}_threads": ceiling2,
        f"fraction_of_limit_{threads}_threads": best / ceiling2,
        "server_overhead_us_per_event": overhead,
        "server_stage_mean_us_c1": {k: v["mean_us"] for k, v in s.items()}}
    print(f"best server {best:,.0f} events/s = {best / ceiling:.0%} of the one-core compute "
          f"limit (1 process {one['goodput_events_per_s'] / ceiling:.0%}, {a.workers} workers "
          f"{many['goodput_events_per_s'] / ceiling:.0%}, BidStream "
          f"{stream['goodput_events_per_s'] / ceiling:.0%}, events wire "
          f"{events['goodput_events_per_s'] / ceiling:.0%}) and {best / ceiling2:.0%} of the "
          f"{threads}-thread one (1 process {one['goodput_events_per_s'] / ceiling2:.0%}); "
          f"server overhead {overhead:.2f} "
          f"us/event (stages at c=1: " + ", ".join(f"{k} {v['mean_us']:.0f}" for k, v in s.items())
          + " us per batch)")
    print(f"-> {write('compute_limit', result)}")


if __name__ == "__main__":
    main()

"""The scoring stage on each onnxruntime execution provider this build offers: CUDA against CPU.

In-process, on demo-world batches taken through decode, lookup and retrieval as the
server does (K candidates each): the per-batch cost of `Scorer.score` for each batch
size on the CPU provider (the server's 1 intra-op thread), with IEEE arithmetic and
with subnormal floats flushed to zero as on the server's native threads, and, where
onnxruntime-gpu and a GPU are there, on the CUDA provider three ways (`--gpu-io plain`:
onnxruntime copies the inputs at every run; `bind`: inputs and output bound in GPU memory,
padded to fixed shapes; `graph`: those shapes replayed as captured CUDA graphs), with the
largest difference between CUDA and CPU scores. Then the server end to end: `adbid serve
--no-gpu` and `adbid serve --require-gpu --gpu-io plain|graph`, closed loop over gRPC at
each concurrency: goodput, p50/p99 and the server's own scoring stage.

Without the CUDA provider it measures the CPU alone and says why.

    python benchmarks/providers.py [--batches 64,256,1024] [--repeats 200]
                                   [--concurrency 1,4] [--duration-s 5] [--runs 2]
                                   [--no-server | --no-cpu-server]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_inputs, machine, write
from serverproc import Server

from adbid._fpmode import flush_denormals
from adbid.bench.loadgen import LoadSpec, run, server_stages
from adbid.config import ServerConfig, default_world_dir
from adbid.money.ledger import SpendLedger
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.stages.scoring import CPU, CUDA, GpuUnavailableError, Scorer
from adbid.world.artifacts import World


def timed(score, inputs: list, repeats: int) -> list[float]:
    for b, u, c, cand in inputs:  # warm-up: first runs allocate (and on CUDA, copy)
        score(u, c, b.device_type, cand)
    times = []
    for _ in range(max(1, repeats // len(inputs))):
        for b, u, c, cand in inputs:
            t0 = time.perf_counter()
            score(u, c, b.device_type, cand)
            times.append(time.perf_counter() - t0)
    return times


def in_process(world: World, batches: list[int], repeats: int, providers: list[str]) -> dict:
    """Scoring alone on this thread. The CPU provider twice: IEEE arithmetic, then with
    subnormal floats flushed to zero as on the server's native threads."""
    cfg = ServerConfig(world=world.path, ledger=None, use_gpu=False)
    p = Pipeline(WorldStages(world, cfg), cfg, SpendLedger(world.campaigns, None))
    def make(prov: str, gpu_io: str = "plain") -> Scorer:
        return Scorer(world.model_path, world.dim, world.ad_index.ntotal,
                      intra_op_threads=cfg.onnx_threads, use_gpu=prov == CUDA,
                      require_gpu=prov == CUDA, gpu_io=gpu_io)
    scorers = {CPU: make(CPU)}
    if CUDA in providers:
        scorers |= {CUDA: make(CUDA), "CUDA bind": make(CUDA, "bind"),
                    "CUDA graph": make(CUDA, "graph")}
        print(f"CUDA graph scorer runs with device I/O {scorers['CUDA graph'].gpu_io}")
    settings = [("CPU, IEEE", CPU, False), ("CPU", CPU, True)] + \
        [("CUDA", CUDA, True), ("CUDA bind", "CUDA bind", True),
         ("CUDA graph", "CUDA graph", True)] * (CUDA in scorers)
    out = {}
    for batch in batches:
        inputs = [(b, u, c, p.retriever.search(q)) for b, q, u, c in demo_inputs(p, batch, n=8)]
        k = inputs[0][3].shape[1]
        row = {}
        for name, prov, flush in settings:
            flush_denormals(flush)
            times = timed(scorers[prov].score, inputs, repeats)
            med = statistics.median(times)
            row[name] = {"median_us": med * 1e6, "min_us": min(times) * 1e6,
                         "max_us": max(times) * 1e6, "n": len(times),
                         "pairs_per_s": batch * k / med}
        row["ieee_over_flushed"] = row["CPU, IEEE"]["median_us"] / row["CPU"]["median_us"]
        if CUDA in scorers:
            row["max_abs_diff"] = float(max(
                np.abs(scorers[name].score(u, c, b.device_type, cand)
                       - scorers[CPU].score(u, c, b.device_type, cand)).max()
                for b, u, c, cand in inputs for name in (CUDA, "CUDA bind", "CUDA graph")))
            row["cpu_over_cuda"] = row["CPU"]["median_us"] / row["CUDA"]["median_us"]
            row["plain_over_graph"] = row["CUDA"]["median_us"] / row["CUDA graph"]["median_us"]
        out[batch] = row
        print(f"batch {batch} x K {k}: " + ", ".join(
            f"{name} {row[name]['median_us']:.0f} us ({row[name]['min_us']:.0f}-"
            f"{row[name]['max_us']:.0f})" for name, _, _ in settings)
            + (f"; CPU/CUDA {row['cpu_over_cuda']:.2f}x, CUDA plain/graph "
               f"{row['plain_over_graph']:.2f}x, max |diff| {row['max_abs_diff']:.2e}"
               if CUDA in scorers else ""), flush=True)
    flush_denormals(False)
    return out


def end_to_end(flags: tuple[str, ...], concurrency: list[int], batch: int, a) -> dict:
    out = {}
    flag = " ".join(flags)
    with Server(*flags) as srv:
        for conc in concurrency:
            runs = []
            for k in range(a.runs):
                r = asyncio.run(run(LoadSpec(target=srv.target, concurrency=conc, batch=batch,
                                             deadline_ms=a.deadline_ms, duration_s=a.duration_s,
                                             seed=conc * 10 + k, connections=max(4, conc))))
                runs.append(r.as_dict())
            runs.sort(key=lambda d: d["goodput_events_per_s"])
            d = runs[len(runs) // 2]
            stages = asyncio.run(server_stages(srv.admin_target))
            rates = [x["goodput_events_per_s"] for x in runs]
            out[f"c={conc}"] = {"goodput_events_per_s": d["goodput_events_per_s"],
                                "goodput_range": [rates[0], rates[-1]],
                                "p50_ms": d["latency_us"].get("p50", 0) / 1000,
                                "p99_ms": d["latency_us"].get("p99", 0) / 1000,
                                "errors": d["errors"], "shed_events": d["shed_events"],
                                "server_scoring_p50_us": stages["scoring"]["p50_us"],
                                "server_total_p50_us": stages["total"]["p50_us"]}
            o = out[f"c={conc}"]
            print(f"serve {flag}, c={conc}, batch {batch}: {o['goodput_events_per_s']:,.0f} "
                  f"events/s (median of {a.runs}; {rates[0]:,.0f}-{rates[-1]:,.0f}), p50 "
                  f"{o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, server scoring p50 "
                  f"{o['server_scoring_p50_us']:.0f} us (lifetime), errors {o['errors']}",
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", default="16,64,256,1024",
                    help="batch sizes for the in-process scoring timings")
    ap.add_argument("--repeats", type=int, default=200, help="timed score() calls per setting")
    ap.add_argument("--batch", type=int, default=256, help="batch size end to end")
    ap.add_argument("--concurrency", default="1,4", help="closed-loop concurrencies end to end")
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--deadline-ms", type=float, default=100.0)
    ap.add_argument("--runs", type=int, default=2, help="runs per setting (median and range)")
    ap.add_argument("--no-server", action="store_true", help="in-process timings only")
    ap.add_argument("--no-cpu-server", action="store_true",
                    help="end to end on CUDA only (the CPU provider's server skipped)")
    a = ap.parse_args()
    world = World.load(default_world_dir())
    available = ort.get_available_providers()
    providers = [CPU]
    if CUDA not in available:
        print(f"onnxruntime {ort.__version__} offers {', '.join(available)}: no CUDA provider "
              "(onnxruntime-gpu, `make ... GPU=1`, on a machine with a GPU); CPU alone")
    else:
        try:  # onnxruntime-gpu lists CUDA whether or not a GPU and its libraries answer
            Scorer(world.model_path, world.dim, world.ad_index.ntotal, require_gpu=True)
            providers.append(CUDA)
        except GpuUnavailableError as exc:
            print(f"{exc}; CPU alone")
    result = {"machine": machine(), "onnxruntime": ort.__version__, "available": available,
              "scoring": in_process(world, [int(x) for x in a.batches.split(",")], a.repeats,
                                    providers)}
    if not a.no_server:
        conc = [int(x) for x in a.concurrency.split(",")]
        result["server"] = {} if a.no_cpu_server and CUDA in providers else \
            {"cpu": end_to_end(("--no-gpu",), conc, a.batch, a)}
        if CUDA in providers:
            for gpu_io in ("plain", "graph"):
                result["server"][f"cuda {gpu_io}"] = end_to_end(
                    ("--require-gpu", "--gpu-io", gpu_io), conc, a.batch, a)
    print(f"-> {write('providers', result)}")


if __name__ == "__main__":
    main()

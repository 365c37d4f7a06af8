"""The catalogue at scale: demo worlds of 10^5..10^7 users and 3,000..10^5 ads, each built
(`adbid demo-world --users N --ads M`), then loaded in a fresh process that reports its
load and start-up time, its memory (peak RSS), the per-event cost of the user lookup (the
compiled id table), the per-batch cost of retrieval (batch 256, K 16), and for an
approximate index its recall@K against exact search over the same ads, at several
nprobe (IVF) or efSearch (HNSW) values, the served one marked. Plots: docs/scale.png.

    python benchmarks/scale.py [--users 100000,1000000,10000000] [--ads 3000,30000,100000]
                               [--keep]          (keep the built worlds for another run)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write

ROOT = Path(__file__).parent
K = 16
EF = (16, 32, 64, 128, 256)


def measure(world_dir: Path) -> dict:
    """In this (fresh) process: load, start, lookup, retrieval, recall."""
    import faiss

    from adbid.config import ServerConfig
    from adbid.stages.pipeline import WorldStages
    from adbid.world.artifacts import World

    t0 = time.perf_counter()
    world = World.load(world_dir)
    t1 = time.perf_counter()
    stages = WorldStages(world, ServerConfig(world=world.path, ledger=None))
    t2 = time.perf_counter()
    out = {"users": len(world.user_ids), "ads": world.ad_index.ntotal,
           "index": type(world.ad_index).__name__, "load_s": t1 - t0, "stages_s": t2 - t1,
           "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    rng = np.random.default_rng(1)
    ids = [str(u) for u in world.user_ids[rng.integers(0, len(world.user_ids), 256)]]
    times = []
    for _ in range(200):
        s = time.perf_counter()
        stages.users.embeddings(stages.users.rows(ids))
        times.append(time.perf_counter() - s)
    out["lookup_us_per_event"] = statistics.median(times) / 256 * 1e6
    queries = world.user_embeddings[rng.integers(0, len(world.user_ids), 1024)]
    batches = [np.ascontiguousarray(queries[i:i + 256]) for i in range(0, 1024, 256)]
    times = []
    for k in range(40):
        s = time.perf_counter()
        stages.retriever.search(batches[k % 4])
        times.append(time.perf_counter() - s)
    out["retrieval_ms_per_batch"] = statistics.median(times) * 1e3
    index = world.ad_index
    if isinstance(index, (faiss.IndexHNSW, faiss.IndexIVF)):
        exact = faiss.IndexFlatIP(index.d)
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # so that its vectors can be read back
        exact.add(index.reconstruct_n(0, index.ntotal))
        _, truth = exact.search(queries, K)
        ivf = isinstance(index, faiss.IndexIVF)
        knob = "nprobe" if ivf else "ef_search"
        served = index.nprobe if ivf else index.hnsw.efSearch
        values = sorted({max(1, index.nlist // d) for d in (128, 64, 32, 16, 8)} | {served}) \
            if ivf else list(EF)
        curve = []
        for v in values:
            if ivf:
                index.nprobe = v
            else:
                index.hnsw.efSearch = v
            s = time.perf_counter()
            for b in batches:
                stages.retriever.search(b)  # IVF: the list-by-list search (ext/listscan.pyx)
            ms = (time.perf_counter() - s) / len(batches) * 1e3
            got = stages.retriever.search(queries)
            recall = float(np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth)]))
            curve.append({knob: v, "recall_at_k": recall, "ms_per_batch": ms})
        if ivf:  # FAISS's own IVF search at the served nprobe, for comparison
            index.nprobe = served
            times = []
            for k in range(12):
                s = time.perf_counter()
                index.search(batches[k % 4], K)
                times.append(time.perf_counter() - s)
            out["faiss_ivf_ms_per_batch"] = statistics.median(times) * 1e3
        out["recall_curve"], out["knob"], out["served"] = curve, knob, served
        out["recall_at_k"] = next(c["recall_at_k"] for c in curve if c[knob] == served)
    return out


def build(users: int, ads: int, where: Path) -> float:
    """Build (or reuse) a world; returns its build time from the manifest."""
    out = where / f"u{users}-a{ads}"
    if not (out / "manifest.json").exists():
        subprocess.run([Path(sys.executable).parent / "adbid", "demo-world", "--out", str(out),
                        "--users", str(users), "--ads", str(ads)], check=True)
    return json.loads((out / "manifest.json").read_text())["build_seconds"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    by_users = sorted((r for r in rows if r["ads"] < 10_000), key=lambda r: r["users"])
    u = [r["users"] for r in by_users]
    ax[0].loglog(u, [r["rss_gb"] for r in by_users], "o-", label="peak RSS (GB)")
    ax[0].loglog(u, [r["load_s"] + r["stages_s"] for r in by_users], "s-",
                 label="load + start (s)")
    ax[0].loglog(u, [r["build_s"] for r in by_users], "^-", label="build (s)")
    ax[0].set_xlabel("users (3,000 ads)")
    ax[0].legend()
    ax[0].set_title("memory and start-up against users")
    ax[1].semilogx(u, [r["lookup_us_per_event"] for r in by_users], "o-", label="lookup")
    by_ads = sorted((r for r in rows if r["users"] == min(x["users"] for x in rows)),
                    key=lambda r: r["ads"])
    a = [r["ads"] for r in by_ads]
    ax[1].semilogx(a, [r["retrieval_ms_per_batch"] / 256 * 1e3 for r in by_ads], "s-",
                   label="retrieval (x-axis: ads)")
    ax[1].set_ylabel("µs per event")
    ax[1].set_xlabel("users (lookup) / ads (retrieval)")
    ax[1].legend()
    ax[1].set_title("per-event cost")
    for r in rows:
        if "recall_curve" in r:
            c = r["recall_curve"]
            ax[2].plot([x["ms_per_batch"] for x in c], [x["recall_at_k"] for x in c], "o-",
                       label=f"{r['index']}, {r['ads']:,} ads ({r['knob']})")
    ax[2].axhline(0.95, color="grey", ls=":")
    ax[2].set_xlabel("ms per batch of 256 (more lists or a wider search: right)")
    ax[2].set_ylabel(f"recall@{K} against exact")
    ax[2].legend()
    ax[2].set_title("approximate retrieval")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", default="100000,1000000,10000000")
    ap.add_argument("--ads", default="3000,30000,100000")
    ap.add_argument("--keep", action="store_true", help="keep the worlds (under results/)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's mode
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure)))
        return
    where = ROOT / "results" / "scale-worlds"
    where.mkdir(parents=True, exist_ok=True)
    users = [int(x) for x in a.users.split(",")]
    ads = [int(x) for x in a.ads.split(",")]
    sizes = [(u, ads[0]) for u in users] + [(users[0], x) for x in ads[1:]]
    rows = []
    try:
        for u, n_ads in sizes:
            build_s = build(u, n_ads, where)
            child = subprocess.run([sys.executable, __file__, "--measure",
                                    str(where / f"u{u}-a{n_ads}")],
                                   check=True, capture_output=True, text=True)
            row = json.loads(child.stdout.strip().splitlines()[-1]) | {"build_s": build_s}
            rows.append(row)
            print(f"{row['users']:>11,} users {row['ads']:>7,} ads ({row['index']}): build "
                  f"{build_s:.1f} s, load {row['load_s']:.1f} s + start {row['stages_s']:.2f} s,"
                  f" RSS {row['rss_gb']:.2f} GB, lookup {row['lookup_us_per_event']:.3f} "
                  f"us/event, retrieval {row['retrieval_ms_per_batch']:.2f} ms/batch"
                  + (f", recall@{K} {row['recall_at_k']:.3f} at {row['knob']} "
                     f"{row['served']}" if "recall_at_k" in row else "")
                  + (f" (FAISS's IVF search: {row['faiss_ivf_ms_per_batch']:.2f} ms/batch)"
                     if "faiss_ivf_ms_per_batch" in row else ""), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(where, ignore_errors=True)
    plot(rows, ROOT.parent / "docs" / "scale.png")
    print(f"-> {write('scale', {'machine': machine(), 'rows': rows})}, docs/scale.png")


if __name__ == "__main__":
    main()

"""Reports of `adbid bench`: a JSON file and PNG plots (matplotlib, from the bench extra)."""

from __future__ import annotations

import json
from pathlib import Path

from adbid.bench.loadgen import LoadResult


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_latency_vs_throughput(results: list[LoadResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = [r.goodput_events_per_s / 1000 for r in results]
    for pct, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p99.9", "v--")):
        ax.plot(x, [r.latency_us.get(pct, float("nan")) / 1000 for r in results], style,
                label=pct)
    deadline = results[0].spec["deadline_ms"] if results else None
    if deadline:
        ax.axhline(deadline, color="red", lw=1, ls=":", label=f"deadline {deadline:g} ms")
    ax.set_xlabel("goodput (thousand decided events/s)")
    ax.set_ylabel("latency of answered calls (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stages(stages: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in ("decode", "lookup", "queue", "retrieval", "scoring", "decision",
                         "ledger", "encode") if s in stages]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, [stages[s]["mean_us"] / 1000 for s in names], label="mean")
    ax.plot(names, [stages[s]["p99_us"] / 1000 for s in names], "k^", label="p99")
    ax.set_ylabel("ms per batch")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Helpers every benchmark uses: machine/version record, repeated timing, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info
                   if line.startswith("model name"))
    versions = {}
    for pkg in ("numpy", "faiss-cpu", "onnxruntime", "onnxruntime-gpu", "grpcio", "Cython"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def repeat(fn: Callable[[], float], repeats: int) -> dict:
    """Run fn (which returns one measurement) `repeats` times; median, min, max."""
    xs = [fn() for _ in range(repeats)]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def write(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def demo_inputs(pipeline, batch: int, n: int = 16, seed: int = 0) -> list:
    """`n` demo-traffic batches of `batch` events taken through decode and lookup as the
    server does: (decoded batch, query vector, user vector, context vector) each."""
    import numpy as np

    from adbid.edge.decode import decode
    from adbid.stages.lookup import resolve
    from adbid.v1 import bidder_pb2 as pb
    from adbid.world.demo_traffic import make_events

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = decode(pb.BidRequest(events=make_events(batch, rng, test=True)).events)
        u = pipeline.users.embeddings(pipeline.users.rows(b.user_id))
        c = pipeline.contexts.embeddings(b.context_text)
        resolve(b, pipeline.world.campaigns)
        out.append((b, u + c, u, c))
    return out

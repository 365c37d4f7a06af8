"""Helpers every benchmark uses: machine/version record, repeated timing, JSON output."""

from __future__ import annotations

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
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("numpy", "faiss-cpu", "onnxruntime", "onnxruntime-gpu", "grpcio", "Cython"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
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

"""Start and stop a real `adbid serve` process for benchmarks (loopback, temporary ledger)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent / "adbid"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_list(text: str) -> set[int]:
    """`0-3,6` -> {0, 1, 2, 3, 6}, checked against the CPUs this process may use."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise SystemExit(f"CPU list {text!r}: not among this process's CPUs {sorted(allowed)}")
    return cpus


def _start(nice: int, cpus: set[int] | None) -> None:
    """In the server's process before exec: its niceness and CPUs, which every thread and
    worker process it starts inherits."""
    if nice:
        os.nice(nice)
    if cpus:
        os.sched_setaffinity(0, cpus)


class Server:
    def __init__(self, *args: str, nice: int = 0, cpus: set[int] | None = None) -> None:
        """`nice`: the server's scheduling niceness. A positive one lets load generators on
        the same cores (standing in for an exchange on its own machine) run first.
        `cpus`: the only CPUs the server (all its threads and workers) may run on."""
        self.dir = Path(tempfile.mkdtemp(prefix="adbid-bench-"))
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        # Worker i serves metrics on metrics_port + i: pick a port whose neighbours are free too.
        self.metrics_port = free_port()
        while self.workers > 1 and not all(port_free(self.metrics_port + i)
                                           for i in range(1, self.workers)):
            self.metrics_port = free_port()
        self.log = self.dir / "serve.log"
        with self.log.open("w") as f:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--port", "0", "--admin-port", "0", "--openrtb-port", "-1",
                 "--metrics-port", str(self.metrics_port), "--ledger", str(self.dir / "ledger"),
                 "--log-format", "text", *args], stderr=f, stdout=subprocess.DEVNULL,
                preexec_fn=(lambda: _start(nice, cpus)) if nice or cpus else None)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # Every worker says when it serves (and serves its metrics from then on).
            ready = re.findall(r"on 127\.0\.0\.1:(\d+) .*admin on 127\.0\.0\.1:(\d+)",
                               self.log.read_text())
            if len(ready) >= self.workers:
                self.target = f"127.0.0.1:{ready[0][0]}"
                self.admin_target = f"127.0.0.1:{ready[0][1]}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def metric(self, name: str) -> float:
        """A metric's sum over its label sets and over every worker."""
        total = 0.0
        for port in range(self.metrics_port, self.metrics_port + self.workers):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                text = r.read().decode()
            total += sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text,
                                                     re.M))
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

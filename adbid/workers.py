"""`adbid serve --workers N`: N server processes sharing one port, under a supervisor.

One process serves about one core's worth of Python (its event loop), so a host
runs several. Each worker is a fresh interpreter (spawned, not forked: nothing of
gRPC, onnxruntime or OpenMP is ever copied across a fork) that binds the same
port with SO_REUSEPORT; the kernel spreads connections over them.

Money stays right without shared state: worker i owns a fixed 1/N slice of every
budget (adbid.money.ledger.SpendLedger.slice_of) and keeps its own ledger in
<ledger>/worker-<i>. The ledger directory records N; starting it with another N is
refused, since the slices (and the spend booked against them) would no longer add
up. Shared budgets across processes and hosts are for Redis leases (docs/design.md).

An OpenRTB notice may reach any worker: it goes on to the worker that made the bid
(adbid.edge.relay), the workers sharing one notice key (<ledger>/notice.key). So does
a gRPC notice sent over another connection than its bid: a worker asks the others for
the request ids it does not know.

Each worker has its own Admin port (admin_port + i) and metrics port
(metrics_port + i) when those are fixed; 0 gives each any free port. An Admin change
(budget, pause, reload) made on any worker is made on every other one too
(adbid.edge.relay): a budget change is the campaign's whole budget, and each worker
books its slice of it. Status is each worker's own.

The supervisor forwards SIGTERM/SIGINT (each worker drains, then exits 0), and if
a worker dies unasked it stops the others and exits 1. A worker whose supervisor
is killed outright drains and exits by itself.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from adbid.config import ServerConfig

log = logging.getLogger(__name__)

WORKER_CONFIG_ENV = "ADBID_WORKER_CONFIG"
MARKER = "workers"


class WorkerSetupError(OSError):
    """The workers cannot be started as configured (a clear reason for the operator)."""


def worker_configs(cfg: ServerConfig, port: int) -> list[ServerConfig]:
    """Each worker's configuration: the shared port, its own Admin/metrics ports and ledger."""
    def nth(base: int, i: int) -> int:
        return base + i if base > 0 else base

    return [replace(cfg, port=port, worker_index=i, admin_port=nth(cfg.admin_port, i),
                    metrics_port=nth(cfg.metrics_port, i),
                    ledger=cfg.ledger / f"worker-{i}" if cfg.ledger is not None else None)
            for i in range(cfg.workers)]


def check_ledger(path: Path | None, workers: int) -> None:
    """Record N in the ledger directory, or refuse a directory kept by another N (or by a
    single process, whose log segments sit at its top)."""
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if marker.exists():
        kept = int(marker.read_text().strip() or 0)
        if kept != workers:
            raise WorkerSetupError(
                f"ledger {path} holds the books of {kept} workers, each with 1/{kept} of every "
                f"budget; starting {workers} would not add up. Use --workers {kept}, or a new "
                "--ledger (after settling the old one)")
        return
    if any(path.glob("segment-*.log")):
        raise WorkerSetupError(
            f"ledger {path} is a single server's ledger (whole budgets); --workers needs its "
            "own ledger directory")
    marker.write_text(f"{workers}\n")


def reserve_port(host: str, port: int) -> tuple[socket.socket | None, int]:
    """For port 0, pick a free port and hold it with a bound, non-listening SO_REUSEPORT
    socket, so the workers (also SO_REUSEPORT) can all bind it and nobody else can."""
    if port:
        return None, port
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]"), 0))
    return holder, holder.getsockname()[1]


def supervise(cfg: ServerConfig, log_format: str, verbose: bool) -> int:
    """Start cfg.workers workers, wait, stop them; returns the exit status."""
    if cfg.admin_port < 0:
        raise WorkerSetupError("--workers needs Admin on its own port (--admin-port >= 0): "
                               "on the shared port an Admin call would reach a random worker")
    check_ledger(cfg.ledger, cfg.workers)
    if cfg.ledger is not None:  # one notice key for all: any worker checks any notice URL
        from adbid.server import notice_key

        notice_key(cfg.ledger)
    holder, port = reserve_port(cfg.host, cfg.port)
    configs = worker_configs(cfg, port)
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        log.info("signal %d: stopping %d workers", signum, len(procs))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for c in configs:
        env = {**os.environ, WORKER_CONFIG_ENV: json.dumps(
            {"config": c.as_dict(), "log_format": log_format, "verbose": verbose})}
        procs.append(subprocess.Popen([sys.executable, "-m", "adbid.workers"], env=env))
    log.info("supervisor: %d workers (pids %s) on %s:%d, each with 1/%d of every budget",
             len(procs), [p.pid for p in procs], cfg.host, port, cfg.workers)
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.poll() is not None and p.returncode != 0 and not stopping:
                    log.error("worker %d (pid %d) exited with %d: stopping the others",
                              i, p.pid, p.returncode)
                    status = 1
                    stop(signal.SIGTERM, None)
        deadline = time.monotonic() + cfg.grace_s + 10
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        status = 1
    finally:
        if holder is not None:
            holder.close()
    codes = [p.returncode for p in procs]
    if any(codes):
        status = 1
    log.info("supervisor: workers exited with %s", codes)
    return status


def worker_main() -> None:
    """A worker process: its configuration comes from the supervisor's environment."""
    from adbid import logs
    from adbid.server import run

    spec = json.loads(os.environ[WORKER_CONFIG_ENV])
    logs.setup(spec["log_format"], spec["verbose"])
    threading.Thread(target=_drain_when_orphaned, args=(os.getppid(),), daemon=True).start()
    run(ServerConfig.from_dict(spec["config"]))


def _drain_when_orphaned(supervisor: int) -> None:
    """A supervisor killed outright (kill -9) cannot forward signals: a worker whose parent
    is gone drains and exits by itself instead of serving on unsupervised."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    log.error("supervisor %d is gone: draining and exiting", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    worker_main()

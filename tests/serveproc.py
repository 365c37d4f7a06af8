"""`adbid serve` as a process of its own for tests (loopback, any free ports)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "adbid"


def start_server(world: Path, ledger: Path, log: Path, *extra: str
                 ) -> tuple[subprocess.Popen, int, int]:
    """Start it, wait until it serves; returns the process, its gRPC and Admin ports."""
    with log.open("w") as f:
        proc = subprocess.Popen([BIN, "serve", "--world", str(world), "--ledger", str(ledger),
                                 "--port", "0", "--metrics-port", "0", "--admin-port", "0",
                                 *extra], stderr=f, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"on 127\.0\.0\.1:(\d+) \(\w[\w ]*\), admin on 127\.0\.0\.1:(\d+)",
                      log.read_text())
        if m:
            return proc, int(m.group(1)), int(m.group(2))
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")

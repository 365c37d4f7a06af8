"""The `adbid` command as a user runs it: a real process, stopped by its pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "adbid"


def test_help_lists_the_commands():
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("serve", "demo-world", "bid", "status"):
        assert cmd in out


def test_serve_bid_status_and_sigterm(tiny_world_dir, tmp_path):
    env = {**os.environ, "ADBID_HOME": str(tmp_path)}
    proc = subprocess.Popen([BIN, "serve", "--world", str(tiny_world_dir), "--port", "0",
                             "--metrics-port", "0", "--admin-port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        ports, deadline, lines = None, time.monotonic() + 60, []
        while ports is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if m := re.search(r"on 127\.0\.0\.1:(\d+) .*admin on 127\.0\.0\.1:(\d+)", line):
                ports = int(m.group(1)), int(m.group(2))
            assert line or proc.poll() is None, "".join(lines)
        assert ports, "".join(lines)
        out = subprocess.run([BIN, "bid", "--target", f"127.0.0.1:{ports[0]}", "--events", "5",
                              "--test"], capture_output=True, text=True, check=True,
                             env=env).stdout
        assert "5 decisions" in out and "/ 5 events" in out
        out = subprocess.run([BIN, "status", "--target", f"127.0.0.1:{ports[1]}"],
                             capture_output=True, text=True, check=True, env=env).stdout
        assert "CPUExecutionProvider" in out and "demo-s7-" in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_a_missing_world_says_how_to_build_one(tmp_path):
    r = subprocess.run([BIN, "serve", "--world", str(tmp_path / "nowhere")], capture_output=True,
                       text=True, env={**os.environ, "ADBID_HOME": str(tmp_path)})
    assert r.returncode != 0 and "demo-world" in r.stdout + r.stderr


def test_a_port_in_use_is_a_clear_error(tiny_world_dir, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([BIN, "serve", "--world", str(tiny_world_dir), "--port", "0",
                            "--admin-port", str(port), "--metrics-port", "0",
                            "--ledger", str(tmp_path / "ledger")],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-500:]
    assert f"cannot listen on 127.0.0.1:{port} (Admin)" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_a_default_demo_world_from_an_older_generator_is_rebuilt(tiny_world_dir, tmp_path,
                                                                 monkeypatch):
    """The default world kept from an older adbid (no generator revision in its manifest)
    is rebuilt before serving; one of this generator's is kept as it is; a world given
    elsewhere is never touched."""
    import json
    import shutil

    from adbid.world import demo_world
    from adbid.world_command import ensure_world

    monkeypatch.setenv("ADBID_HOME", str(tmp_path))
    from adbid.config import default_world_dir

    world = default_world_dir()
    shutil.copytree(tiny_world_dir, world)
    manifest = json.loads((world / "manifest.json").read_text())
    manifest.pop("builder", None)
    (world / "manifest.json").write_text(json.dumps(manifest))
    elsewhere = tmp_path / "mine"
    shutil.copytree(world, elsewhere)
    built = []
    monkeypatch.setattr(demo_world, "build", lambda out, spec, progress: built.append(out) or {
        **manifest, "builder": demo_world.BUILDER})
    monkeypatch.setattr("adbid.world_command.console.print", lambda *a, **k: None)
    ensure_world(elsewhere, 42)
    assert built == []
    ensure_world(world, 42)
    assert built == [world]
    (world / "manifest.json").write_text(json.dumps({**manifest, "builder": demo_world.BUILDER}))
    ensure_world(world, 42)
    assert built == [world]

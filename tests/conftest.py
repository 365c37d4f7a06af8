"""Shared fixtures: a tiny world (built once per session) and a real server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from adbid.config import ServerConfig
from adbid.world.artifacts import World
from adbid.world.demo_world import DemoWorldSpec, build

# Servers started as processes by the tests (`adbid serve`) take any free port for
# OpenRTB rather than 8080, so that they never collide with each other or a running one.
os.environ.setdefault("ADBID_OPENRTB_PORT", "-1")


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("worlds") / "tiny"
    build(out, DemoWorldSpec.tiny(), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_world(tiny_world_dir) -> World:
    return World.load(tiny_world_dir)


class ServerThread:
    """A BidServer on its own event loop in a thread; stopped (and joined) on exit."""

    def __init__(self, cfg: ServerConfig) -> None:
        from adbid.server import BidServer

        self.server = BidServer(cfg)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced to the test by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop (e.g. to read ledger state consistently)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.server.stop(0.5))
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


def server_config(world_dir: Path, ledger: Path | None, **overrides) -> ServerConfig:
    # Admin on the main (loopback) port, so that one channel reaches everything.
    return replace(ServerConfig(world=world_dir, ledger=ledger, host="127.0.0.1", port=0,
                                metrics_port=0, admin_port=-1, default_deadline_ms=2000,
                                openrtb_port=-1),
                   **overrides)


@pytest.fixture
def server_factory(tiny_world_dir, tmp_path) -> Iterator:
    started: list[ServerThread] = []

    def start(**overrides) -> ServerThread:
        overrides.setdefault("ledger", tmp_path / f"ledger{len(started)}")
        s = ServerThread(server_config(tiny_world_dir, **overrides)).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory) -> ServerThread:
    return server_factory()


@pytest.fixture
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch

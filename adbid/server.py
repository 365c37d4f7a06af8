"""A running adbid process: start, reload, drain and stop.

It loads the world, opens the books, builds the pipeline, and puts the edges
(adbid.edge) in front of it on their ports; then it warms up, keeps house once a
second, swaps worlds on reload, and drains on stop. What each call does is the
edges' business, when work may run the flow wing's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from adbid import logs, metrics
from adbid.config import ServerConfig
from adbid.edge import admin, bidder
from adbid.edge.errors import ErrorInterceptor, ReloadRefused
from adbid.edge.health import Health
from adbid.edge.http import OpenRtbApp, OpenRtbServer
from adbid.edge.openrtb import NoticeSigner
from adbid.edge.relay import PeersOnly, WorkerRelay, peer_secret, write_address
from adbid.edge.tls import is_loopback, tls_credentials
from adbid.flow.deadlines import Timekeeper
from adbid.money.journal import open_log
from adbid.money.ledger import SpendLedger
from adbid.money.shared import SharedBudgets, process_id, redacted
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.v1 import admin_pb2_grpc, bidder_pb2
from adbid.world.artifacts import World
from adbid.world.demo_traffic import make_events

log = logging.getLogger(__name__)

SERVICE_NAMES = (bidder.SERVICE, admin.SERVICE)


class BidServer:
    """A running adbid server: `await start()`, then `await stop()`."""

    def __init__(self, cfg: ServerConfig, world: World | None = None) -> None:
        self.cfg = cfg
        self.world = world
        self.port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None  # prometheus_client's WSGI server
        self._tasks: list[asyncio.Task] = []
        self.openrtb: OpenRtbServer | None = None
        self.relay_server: grpc.aio.Server | None = None
        self.openrtb_port = 0
        self.keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)
        # Reloads load worlds here: one thread, at a lower OS priority than serving's.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="adbid-loader",
                                          initializer=_lower_priority)

    async def start(self) -> int:
        cfg = self.cfg
        credentials = tls_credentials(cfg)  # fail on a bad TLS setup before loading anything
        admin_address = f"{cfg.host}:{cfg.port}" if cfg.admin_port < 0 else \
            f"{cfg.admin_host}:{cfg.admin_port}"
        if not is_loopback(admin_address.rpartition(":")[0]) and not (
                cfg.admin_token and credentials):
            raise OSError(f"Admin on {admin_address}, off loopback, needs both --admin-token "
                          "and TLS (--tls-cert, --tls-key), or its bearer token would travel in "
                          "clear; keep it on loopback (--admin-host 127.0.0.1) otherwise")
        world = self.world if self.world is not None else \
            await asyncio.to_thread(World.load, cfg.world)
        stages = await asyncio.to_thread(WorldStages, world, cfg)
        # Shared budgets (--redis): every process leases from the whole budget; else each
        # worker owns its 1/N slice.
        share = (0, 1) if cfg.redis else (cfg.worker_index, cfg.workers)
        self.ledger = SpendLedger(world.campaigns, open_log(cfg.ledger, cfg.ledger_sync),
                                  cfg.reservation_ttl_s, share=share,
                                  late_win_window_s=cfg.late_win_window_s)
        self.pipeline = Pipeline(stages, cfg, self.ledger)
        self._reload_lock = asyncio.Lock()
        metrics.PROVIDER.info({"provider": self.pipeline.scorer.provider})
        metrics.watch_campaigns(lambda: self.pipeline)
        metrics.WORLD.info({"version": world.version, "path": str(world.path)})
        admin_on_main = cfg.admin_port < 0
        limit = cfg.max_message_bytes
        options = [("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit),
                   # Workers of one supervisor share the port; a lone server owns it.
                   ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0)]
        self.server = grpc.aio.server(options=options, interceptors=(ErrorInterceptor(),))
        self.health = Health()
        current = lambda: self.pipeline  # noqa: E731 - reloads swap self.pipeline
        self.bidder = bidder.BidderService(current, self.keeper, cfg)
        self.server.add_generic_rpc_handlers((self.bidder.handlers(),))
        admin_service = admin.AdminService(current, self.reload, self.keeper.timers,
                                           self.bidder.tally, cfg)
        self.admin_server = None if admin_on_main else grpc.aio.server(
            options=[*options[:2], ("grpc.so_reuseport", 0)],  # each worker its own
            interceptors=(ErrorInterceptor(),))
        admin_target = self.server if admin_on_main else self.admin_server
        admin_pb2_grpc.add_AdminServicer_to_server(admin_service, admin_target)
        main_services = SERVICE_NAMES if admin_on_main else SERVICE_NAMES[:1]
        for srv, names in ((self.server, main_services),
                           (self.admin_server, SERVICE_NAMES[1:])):
            if srv is None:
                continue
            health_pb2_grpc.add_HealthServicer_to_server(self.health, srv)
            reflection.enable_server_reflection(
                (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), srv)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{cfg.host}:{cfg.port}"
        self.port = _listen(self.server, address, credentials, "gRPC")
        self.admin_port = self.port
        if self.admin_server is not None:
            self.admin_port = _listen(self.admin_server, admin_address, credentials, "Admin")
            await self.admin_server.start()
        await self.server.start()
        if cfg.redis:
            books = SharedBudgets(
                cfg.redis, self.ledger, world.campaigns,
                process_id(cfg.host, self.port, cfg.ledger), sync_s=cfg.redis_sync_ms / 1000,
                ttl_s=cfg.redis_lease_ttl_s, float_micros=cfg.redis_float_micros)
            if cfg.redis_frequency:
                books.bind_frequency(self.pipeline.core.frequency, world.campaigns)
                self.pipeline.core.counted = books.counted
            if not await books.sync():  # serving anyway: no-bids until Redis answers
                log.warning("shared budgets: %s does not answer yet (%s); no bids until it "
                            "does", redacted(cfg.redis), books.last_error)
            self._tasks.append(asyncio.create_task(books.run()))
        self.relay_server, relay = None, None
        if cfg.workers > 1 and cfg.ledger is not None:
            # Other workers' notices for this worker's bids, and Admin changes, come here.
            secret = peer_secret(notice_key(cfg.ledger.parent))
            self.relay_server = grpc.aio.server(interceptors=(PeersOnly(secret),
                                                              ErrorInterceptor()))
            self.relay_server.add_generic_rpc_handlers((self.bidder.handlers(),))
            admin_pb2_grpc.add_AdminServicer_to_server(admin_service, self.relay_server)
            relay_port = _listen(self.relay_server, "127.0.0.1:0", None, "worker relay")
            await self.relay_server.start()
            write_address(Path(cfg.ledger), relay_port)
            relay = WorkerRelay(Path(cfg.ledger).parent, cfg.worker_index, cfg.workers, secret)
            self.bidder.relay = admin_service.relay = relay
        if cfg.openrtb_port:
            # Workers share one notice key, in the directory above their ledgers, so that
            # any of them can check any worker's notice URLs.
            shared = cfg.ledger.parent if cfg.workers > 1 and cfg.ledger is not None else None
            signer = NoticeSigner(notice_key(shared or cfg.ledger),
                                  cfg.worker_index if shared else None)
            app = OpenRtbApp(self.bidder, current, self.keeper, cfg, signer, relay)
            self.openrtb = OpenRtbServer(app, cfg)
            self.openrtb_port = await self.openrtb.start()
        await self._warm_up(self.pipeline)
        if cfg.metrics_port:
            self._metrics_http, _ = start_http_server(max(cfg.metrics_port, 0),
                                                      addr=cfg.metrics_host)
            self.metrics_port = self._metrics_http.server_port
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.bidder.loop_lag.run()))
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector's scans, whose full passes otherwise pause the event loop.
        gc.collect()
        gc.freeze()
        # Threads that finish native work (FAISS, onnxruntime, the ledger's write) need the
        # GIL back to hand over their result; the default 5 ms switch interval lets a busy
        # event loop keep it that long, which showed as a 5-10 ms tail on those stages.
        sys.setswitchinterval(cfg.gil_switch_ms / 1000)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.openrtb is not None:
            self.openrtb.app.serving = True
            log.info("OpenRTB 2.6 on http://%s:%d/openrtb2/bid (notices to %s)",
                     cfg.openrtb_host, self.openrtb_port, self.openrtb.app.base)
        log.info("%sserving world %s on %s:%d (%s), admin on %s:%d%s (%s), metrics %s, "
                 "provider %s, event loop %s",
                 f"worker {cfg.worker_index + 1}/{cfg.workers}: " if cfg.workers > 1 else "",
                 world.version, cfg.host, self.port,
                 "mutual TLS" if cfg.tls_client_ca else "TLS" if credentials else "plaintext",
                 cfg.admin_host if self.admin_server else cfg.host, self.admin_port,
                 " (token required)" if cfg.admin_token else "",
                 "TLS" if credentials else "plaintext",
                 f"http://{cfg.metrics_host}:{self.metrics_port}/metrics" if self.metrics_port
                 else "off",
                 self.pipeline.scorer.provider, type(asyncio.get_running_loop()).__module__)
        return self.port

    async def _set_health(self, status) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _test_batch(self, pipeline: Pipeline, n: int, seed: int,
                          learn: bool = True) -> bidder_pb2.BidResponse:
        """Synthetic test traffic (no budget, frequency or spend effects) through every stage;
        `learn=False`: its stage costs are not taught to the deadline model."""
        events = make_events(n, np.random.default_rng(seed), test=True, id_prefix="calibrate-")
        resp = await self.bidder.bid(bidder_pb2.BidRequest(batch_id="calibration", events=events),
                                     self.keeper.unbounded(learn=learn), pipeline=pipeline)
        assert isinstance(resp, bidder_pb2.BidResponse)  # events in, a message out
        return resp

    async def _warm_up(self, pipeline: Pipeline) -> None:
        """Two passes of test batches of several sizes through `pipeline`: the first warms
        caches and is forgotten, the second seeds the stage-cost model (per batch and per
        event), on which every deadline check depends."""
        logs.request_id.set("warm-up")
        cap = max(1, self.cfg.max_batch_events)
        sizes = sorted({min(cap, n) for n in (1, 16, 64, 256, 1024)})
        for warm_pass in range(2):
            if warm_pass == 1:
                self.keeper.costs.reset()
            for i, n in enumerate(sizes):
                resp = await self._test_batch(pipeline, n, seed=warm_pass * 100 + i)
                if len(resp.decisions) != n or any(
                        d.no_bid_reason == bidder_pb2.NO_BID_REASON_DEADLINE
                        for d in resp.decisions):
                    raise RuntimeError(f"warm-up answered {len(resp.decisions)} of {n} events")
        log.info("warm-up on %s: batches of %s events, %d us for the last",
                 pipeline.world.version, sizes, resp.server_latency_us)
        logs.request_id.set("")

    async def _check(self, pipeline: Pipeline) -> None:
        """A reloaded pipeline's check before it serves: small test batches through every
        stage, their costs not learned (the model keeps what serving taught it)."""
        logs.request_id.set("reload-check")
        n = 16  # one small batch: it costs serving a little
        resp = await self._test_batch(pipeline, n, seed=900, learn=False)
        if len(resp.decisions) != n or any(d.no_bid_reason == bidder_pb2.NO_BID_REASON_DEADLINE
                                           for d in resp.decisions):
            raise RuntimeError(f"the check answered {len(resp.decisions)} of {n} events")
        logs.request_id.set("")

    async def reload(self, path: str) -> None:
        """Load and check a world beside the current one, then swap it in.

        Raises ReloadRefused with the reason; the running world is untouched then.
        """
        async with self._reload_lock:
            old = self.pipeline
            new: Pipeline | None = None
            try:
                # Off the event loop, on a thread the OS runs after serving's, taking over
                # what did not change; then a short check, not a full warm-up: the cost
                # model that serving's deadlines rest on is left alone.
                loop = asyncio.get_running_loop()
                t0 = time.perf_counter()
                world = await loop.run_in_executor(self._loader, functools.partial(
                    World.load, path, previous=old.world))
                stages = await loop.run_in_executor(self._loader, WorldStages, world,
                                                    self.cfg, old.stages)
                new = Pipeline(stages, self.cfg, self.ledger, previous=old)
                t1 = time.perf_counter()
                await self._check(new)
            except Exception as exc:  # any failure refuses the world: the old one keeps serving
                if new is not None and new.executor is old.executor:  # its threads go back
                    old.owns_executor, new.owns_executor = True, False
                metrics.ERRORS.labels("reload_refused").inc()
                log.error("reload of %s refused: %s", path, exc)
                raise ReloadRefused(f"world {path} refused: {exc}") from None
            self.pipeline = new
            metrics.WORLD.info({"version": world.version, "path": str(world.path)})
            metrics.PROVIDER.info({"provider": new.scorer.provider})
            log.info("reloaded: now serving %s (was %s); loaded in %.0f ms (taken over "
                     "unchanged: %s), checked in %.0f ms", world.version, old.world.version,
                     (t1 - t0) * 1e3, ", ".join(world.shared) or "nothing",
                     (time.perf_counter() - t1) * 1e3)
            self._tasks.append(asyncio.create_task(self._retire(old)))

    async def _retire(self, old: Pipeline) -> None:
        """Close a replaced pipeline once its in-flight batches have finished."""
        deadline = time.monotonic() + 60
        while old.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(old.close)

    async def _housekeeping(self) -> None:
        """Once a second: release expired reservations, update pacing, recalibrate."""
        ledger = self.ledger
        while True:
            await asyncio.sleep(1.0)
            try:
                expired = ledger.expire()
                if expired:  # their frequency counts go back, as a loss's would
                    now = int(time.time())
                    release = self.pipeline.core.release_frequency
                    for res in expired:
                        release(res, now)
                    log.info("%d reservations expired without a notice (%d in doubt now)",
                             len(expired), len(ledger.doubt))
                    metrics.EXPIRED.inc(len(expired))
                await ledger.flush()
                if ledger.compact_if_needed():
                    log.info("ledger compaction queued")
                self.pipeline.update_pacing()
                self.pipeline.refit_shading()
                if self.keeper.starved():
                    logs.request_id.set("calibration")
                    p = self.pipeline

                    async def measure(n: int, p: Pipeline = p) -> None:
                        await self._test_batch(p, n, seed=int(time.time()) + n)

                    await self.keeper.recalibrate(measure)
                    logs.request_id.set("")
            except Exception:
                log.exception("housekeeping failed")
                metrics.ERRORS.labels("housekeeping").inc()

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls for the grace period, stop."""
        await self.health.drain()
        if self.openrtb is not None:
            await self.openrtb.stop()
        if self.relay_server is not None:
            await self.relay_server.stop(1.0)
        for task in self._tasks:
            task.cancel()
        grace = self.cfg.grace_s if grace_s is None else grace_s
        if self.admin_server is not None:
            await self.admin_server.stop(grace)
        await self.server.stop(grace)
        if self.bidder.relay is not None:  # (the OpenRTB notices' relay too)
            await self.bidder.relay.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.pipeline.close()
        self._loader.shutdown(wait=False)
        await self.ledger.flush()
        if self.ledger.shared is not None:
            await self.ledger.shared.close()
        self.ledger.close()
        log.info("stopped")


def _lower_priority() -> None:
    """In a loader thread: nice 10 for this thread alone (Linux schedules threads as tasks),
    so loading yields the CPU to serving; where that is not possible, it runs as it is."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _listen(server: grpc.aio.Server, address: str,
            credentials: grpc.ServerCredentials | None, what: str) -> int:
    """Bind a gRPC server's port; a port in use is an OSError that says which, not a
    traceback (grpc raises RuntimeError, or returns 0 in older versions)."""
    try:
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} ({what}): the address is in use or not "
                      "this machine's")
    return port


def notice_key(ledger: Path | None) -> bytes:
    """The key notice URLs are signed with: kept beside the ledger, so that notices for
    bids made before a restart still verify; a fresh one when the books are in memory."""
    if ledger is None:
        return os.urandom(32)
    path = Path(ledger) / "notice.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(os.urandom(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def run(cfg: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then drain and return."""

    async def main() -> None:
        server = BidServer(cfg)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received; draining for up to %.1f s", cfg.grace_s)
        await server.stop()

    factory = None
    if cfg.event_loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())

"""The gRPC edge: Bidder and Admin services, health, reflection, metrics, lifecycle.

One asyncio grpc.aio server per process. Protobuf is converted here and only
here (decode on the way in, encode on the way out); the pipeline sees columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

import adbid
from adbid import logs, metrics
from adbid.flow.admission import AdmissionLimit, LoopLag
from adbid.config import ServerConfig
from adbid.edge.decode import (BadRequest, Request, UndecodableRequest, batch_size, decode_request,
                          is_columnar, parse_request, request_ids)
from adbid.world.demo_traffic import make_events
from adbid.edge.encode import all_no_bid, encode, encode_columns, finish, serialize
from adbid.money.ledger import LedgerError, SpendLedger, open_store
from adbid.stages.pipeline import NativeStages, Pipeline
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2, bidder_pb2_grpc
from adbid.world.artifacts import World

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    bidder_pb2.DESCRIPTOR.services_by_name["Bidder"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)
REASON_NAMES = {v: bidder_pb2.NoBidReason.Name(v) for v in bidder_pb2.NoBidReason.values()}


class NotFound(KeyError):
    """The request names something that does not exist (NOT_FOUND)."""


class Overloaded(RuntimeError):
    """Too much work in flight; refused at once (RESOURCE_EXHAUSTED)."""


class ReloadRefused(RuntimeError):
    """A world that failed validation; the running one keeps serving (FAILED_PRECONDITION)."""


class Unauthenticated(PermissionError):
    """An Admin call without the right bearer token (UNAUTHENTICATED)."""


class Unmeetable(RuntimeError):
    """Not even a no-bid answer fits before the deadline (DEADLINE_EXCEEDED, at once)."""


# Exceptions a client caused, and the status each one maps to.
CLIENT_ERRORS = {
    BadRequest: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    UndecodableRequest: (grpc.StatusCode.INVALID_ARGUMENT, "undecodable_request"),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "overload"),
    Unmeetable: (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
    NotFound: (grpc.StatusCode.NOT_FOUND, "not_found"),
    LedgerError: (grpc.StatusCode.FAILED_PRECONDITION, "failed_precondition"),
    ReloadRefused: (grpc.StatusCode.FAILED_PRECONDITION, "reload_refused"),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
}


def rpc_errors(name: str):
    """Map exceptions to status codes; clients never see a traceback."""

    def wrap(fn):
        @functools.wraps(fn)
        async def unary(self, request, context):
            try:
                response = await fn(self, request, context)
            except tuple(CLIENT_ERRORS) as exc:
                code, kind = CLIENT_ERRORS[type(exc)]
                metrics.REQUESTS.labels(name, code.name).inc()
                metrics.ERRORS.labels(kind).inc()
                await context.abort(code, str(exc.args[0]) if exc.args else type(exc).__name__)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("%s failed", name)
                metrics.REQUESTS.labels(name, "INTERNAL").inc()
                metrics.ERRORS.labels("internal").inc()
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            metrics.REQUESTS.labels(name, "OK").inc()
            return response

        return unary

    return wrap


class BidderService(bidder_pb2_grpc.BidderServicer):
    """Bid, BidStream and ReportOutcomes. Requests arrive as raw bytes (see `handlers`), so
    that a message which does not parse gets INVALID_ARGUMENT with the reason."""

    def __init__(self, owner: BidServer, cfg: ServerConfig) -> None:
        self.owner = owner  # owner.pipeline is read once per request: reloads swap it
        self.cfg = cfg
        self._batches = 0
        # Never fewer batches than native threads, or the threads idle while batches wait.
        self.admission = AdmissionLimit(cfg.max_inflight_batches,
                                        minimum=max(1, min(cfg.native_threads,
                                                           cfg.max_inflight_batches)))
        self.loop_lag = LoopLag()
        metrics.ADMISSION_LIMIT.set(int(self.admission.limit))

    def handlers(self) -> grpc.GenericRpcHandler:
        out = serialize  # columnar answers are written as bytes
        return grpc.method_handlers_generic_handler(SERVICE_NAMES[0], {
            "Bid": grpc.unary_unary_rpc_method_handler(self.Bid, None, out),
            "BidStream": grpc.stream_stream_rpc_method_handler(self.BidStream, None, out),
            "ReportOutcomes": grpc.unary_unary_rpc_method_handler(
                self.ReportOutcomes, None, bidder_pb2.ReportOutcomesResponse.SerializeToString),
        })

    def _deadline(self, request: Request, remaining_s: float | None) -> float:
        budgets = [b for b in (remaining_s, request.deadline_ms / 1000 if request.deadline_ms > 0
                               else None) if b is not None]
        budget = min(budgets) if budgets else self.cfg.default_deadline_ms / 1000
        return time.monotonic() + budget - self.cfg.send_margin_ms / 1000

    async def bid(self, request: Request, deadline: float,
                  errors: dict[int, str] | None = None,
                  pipeline: Pipeline | None = None) -> bidder_pb2.BidResponse | bytes:
        t0 = time.perf_counter()
        n = batch_size(request)
        if n > self.cfg.max_batch_events:
            raise BadRequest(f"events: batch of {n} is above the maximum of "
                             f"{self.cfg.max_batch_events}")
        p = pipeline or self.owner.pipeline
        self._batches += 1
        rid_token = logs.request_id.set(request.batch_id or f"batch-{self._batches}")
        try:
            return await self._bid(request, deadline, errors, p, t0, n)
        finally:
            logs.request_id.reset(rid_token)

    async def _bid(self, request: Request, deadline: float,
                   errors: dict[int, str] | None, p: Pipeline, t0: float,
                   n: int) -> bidder_pb2.BidResponse | bytes:
        timers, costs = p.timers, p.costs
        columnar = is_columnar(request)
        left = deadline - time.monotonic()
        if n and left < costs.mean(n, "encode"):
            metrics.SHED.labels("arrival").inc(n)
            raise Unmeetable(f"deadline: {max(left, 0) * 1e3:.2f} ms left cannot cover an answer "
                             f"for {n} events")
        if n and left < costs.expect_total(n):
            metrics.SHED.labels("arrival").inc(n)
            p.shed_batches += 1
            self._adapt(0.0, left, shed=True)
            return all_no_bid(request.batch_id, request_ids(request),
                              bidder_pb2.NO_BID_REASON_DEADLINE, p.world.version, columnar)
        batch = decode_request(request, errors)
        t1 = time.perf_counter()
        timers.record("decode", t1 - t0)
        costs.observe("decode", t1 - t0, n)
        p.inflight_batches += 1
        p.peak_inflight_batches = max(p.peak_inflight_batches, p.inflight_batches)
        metrics.INFLIGHT.inc()
        try:
            dec, commit = await p.decide(batch, deadline)
            t2 = time.perf_counter()
            if columnar:
                resp = encode_columns(request.batch_id, batch, dec, p.campaign_table,
                                      p.creative_table, p.world.version)
            else:
                resp = encode(request.batch_id, batch, dec, p.campaign_ids, p.creative_ids,
                              p.world.version)
            t3 = time.perf_counter()
            timers.record("encode", t3 - t2)
            costs.observe("encode", t3 - t2, n)
            await p.durable(commit, n)  # the write overlapped encoding
        finally:
            p.inflight_batches -= 1
            metrics.INFLIGHT.dec()
        t3 = time.perf_counter()
        timers.record("total", t3 - t0)
        shed = not dec.bid.any() and bool((dec.reason == bidder_pb2.NO_BID_REASON_DEADLINE).any())
        if not shed:
            costs.observe("total", t3 - t0, n)  # decided in full: a sample of the real cost
        self._adapt(t3 - t0, left, shed)
        latency_us = int((t3 - t0) * 1e6)
        resp = finish(resp, latency_us)
        if (over := time.monotonic() - deadline) > 0:
            # Never answer late. `deadline` is the last moment an answer can leave and still
            # arrive (the caller's deadline less the send margin); one ready after it would
            # reach an exchange that has moved on, so its bids could neither win nor be
            # billed. Their reservations go back at once instead of at expiry.
            withdrawn = p.withdraw(batch, dec)
            metrics.LATE_ANSWERS.inc()
            log.warning("answer ready %.2f ms after it had to leave (the deadline less the "
                        "%.1f ms send margin): withheld, %d bids withdrawn",
                        over * 1e3, self.cfg.send_margin_ms, withdrawn)
            raise Unmeetable(f"deadline: the answer was ready {over * 1e3:.2f} ms after it had "
                             f"to leave (the deadline less the {self.cfg.send_margin_ms:g} ms "
                             f"send margin) and was withheld; its {withdrawn} bids were withdrawn")
        metrics.EVENTS.inc(n)
        metrics.BATCH_EVENTS.observe(n)
        bids = int(dec.bid.sum())
        metrics.BIDS.inc(bids)
        log.debug("batch: %d events, %d bids, %d us", n, bids, latency_us)
        if bids < n:
            counts = np.bincount(dec.reason, minlength=len(REASON_NAMES))
            for reason, count in enumerate(counts.tolist()):
                if count and reason:
                    metrics.NO_BIDS.labels(REASON_NAMES.get(reason, str(reason))).inc(count)
        return resp

    def _admit(self) -> bool:
        """Room for one more batch under the adaptive limit. (Refusing while the event loop
        lags was tried: a reload's loading thread lags the loop too, and requests failed.)"""
        return self.admission.admits(self.owner.pipeline.inflight_batches)

    def _adapt(self, latency_s: float, budget_s: float, shed: bool) -> None:
        """Feed the admission limit one answered batch; the loop's lag counts as latency
        (the answer still has to be sent, and new requests wait that long to start)."""
        lag = self.loop_lag.recent_s
        self.admission.done(latency_s + lag, budget_s + lag, shed)
        metrics.ADMISSION_LIMIT.set(int(self.admission.limit))
        metrics.LOOP_LAG.set(lag)

    @rpc_errors("Bid")
    async def Bid(self, raw: bytes, context):
        if not self._admit():  # before parsing: a refusal must cost next to nothing
            metrics.OVERLOAD.inc()
            raise Overloaded(f"overloaded: {self.owner.pipeline.inflight_batches} batches in "
                             f"flight, the adaptive limit is {int(self.admission.limit)} (at most "
                             f"{self.cfg.max_inflight_batches}); retry later")
        request, errors = parse_request(raw)
        return await self.bid(request, self._deadline(request, context.time_remaining()), errors)

    async def BidStream(self, request_iterator, context) -> AsyncIterator[bidder_pb2.BidResponse]:
        """Batches are decided concurrently (up to max_stream_inflight); replies carry batch_id.

        A batch that cannot be taken (overload, bad message) gets a reply too: the stream
        itself never fails because of one batch."""
        replies: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.cfg.max_stream_inflight)
        tasks: set[asyncio.Task] = set()
        version = self.owner.pipeline.world.version

        def refuse(request: Request, reason: int, error: str = ""):
            return all_no_bid(request.batch_id, request_ids(request), reason, version,
                              is_columnar(request), error)

        async def one(raw: bytes, remaining: float | None) -> None:
            request = bidder_pb2.BidRequest()
            try:
                request, errors = parse_request(raw)
                if not self._admit():
                    metrics.OVERLOAD.inc()
                    metrics.SHED.labels("admission").inc(len(request_ids(request)))
                    reply = refuse(request, bidder_pb2.NO_BID_REASON_DEADLINE)
                else:
                    reply = await self.bid(request, self._deadline(request, remaining), errors)
            except (BadRequest, UndecodableRequest) as exc:
                metrics.ERRORS.labels("invalid_request").inc()
                reply = refuse(request, bidder_pb2.NO_BID_REASON_INVALID_EVENT, str(exc))
            except Unmeetable as exc:
                reply = refuse(request, bidder_pb2.NO_BID_REASON_DEADLINE, str(exc))
            except Exception:
                log.exception("BidStream batch %r failed", request.batch_id)
                metrics.ERRORS.labels("internal").inc()
                reply = bidder_pb2.BidResponse(batch_id=request.batch_id)
            finally:
                slots.release()
            await replies.put(reply)

        async def read() -> None:
            try:
                async for raw in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(raw, context.time_remaining()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await replies.put(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
            await reader  # re-raises a reader failure
            metrics.REQUESTS.labels("BidStream", "OK").inc()
        finally:
            reader.cancel()

    @rpc_errors("ReportOutcomes")
    async def ReportOutcomes(self, raw: bytes, context):
        """Apply the notices, make them durable, then acknowledge them."""
        request = bidder_pb2.ReportOutcomesRequest()
        self._batches += 1
        logs.request_id.set(f"notices-{self._batches}")
        try:
            request.ParseFromString(raw)
        except Exception as exc:
            raise UndecodableRequest(f"request: not an adbid.v1.ReportOutcomesRequest ({exc})") \
                from None
        if len(request.outcomes) > self.cfg.max_batch_events:
            raise BadRequest(f"outcomes: {len(request.outcomes)} is above the maximum of "
                             f"{self.cfg.max_batch_events}")
        p = self.owner.pipeline
        ledger, core = p.ledger, p.core
        resp = bidder_pb2.ReportOutcomesResponse()
        late_before = ledger.late_wins
        for o in request.outcomes:
            r = ledger.apply(o.request_id, o.type, o.clearing_price_cpm_micros)
            if r.released is not None:
                core.release_frequency(r.released, int(time.time()))
            kind = bidder_pb2.OutcomeType.Name(o.type) if o.type in (1, 2, 3) else "UNKNOWN"
            metrics.NOTICES.labels(kind, "duplicate" if r.duplicate else
                                   "accepted" if r.accepted else "rejected").inc()
            resp.results.add(request_id=o.request_id, accepted=r.accepted, error=r.error,
                             duplicate=r.duplicate)
        await ledger.flush()
        metrics.LATE_WINS.inc(ledger.late_wins - late_before)
        return resp


def admin_only(fn):
    """Check the bearer token (when one is configured) before an Admin method runs."""

    @functools.wraps(fn)
    async def checked(self, request, context):
        token = self.cfg.admin_token
        if token:
            given = dict(context.invocation_metadata()).get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Unauthenticated("authorization: missing or wrong bearer token")
        return await fn(self, request, context)

    return checked


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, owner: BidServer, cfg: ServerConfig, started_at: float) -> None:
        self.owner = owner
        self.cfg = cfg
        self.started_at = started_at

    @property
    def pipeline(self) -> Pipeline:
        return self.owner.pipeline

    def _campaign_status(self, row: int) -> admin_pb2.CampaignStatus:
        p = self.pipeline
        led = p.ledger
        return admin_pb2.CampaignStatus(
            campaign_id=p.campaign_ids[row], active=bool(led.active[row]),
            budget_micros=int(led.budget_micros[row]), spent_micros=int(led.spent_micros[row]),
            reserved_micros=int(led.reserved_micros[row]),
            pacing_multiplier=float(p.core.pacing[row]),
            pacing_mode=p.world.campaigns.pacing_mode[row],
            planned_spend_micros=int(p.pacing.planned_micros[row]))

    @rpc_errors("UpdateCampaign")
    @admin_only
    async def UpdateCampaign(self, request, context):
        """Validate, write to the ledger, apply; answers with the campaign after the change."""
        ledger = self.pipeline.ledger
        try:
            row = ledger.update_campaign(
                request.campaign_id,
                request.budget_micros if request.HasField("budget_micros") else None,
                request.active if request.HasField("active") else None,
                request.reason)
        except KeyError:
            raise NotFound(f"campaign_id: no campaign {request.campaign_id!r}") from None
        await ledger.flush()
        return admin_pb2.UpdateCampaignResponse(campaign=self._campaign_status(row))

    @rpc_errors("Reload")
    @admin_only
    async def Reload(self, request, context):
        old = self.pipeline.world.version
        t0 = time.perf_counter()
        await self.owner.reload(request.world_path or str(self.pipeline.world.path))
        return admin_pb2.ReloadResponse(world_version=self.pipeline.world.version,
                                        previous_version=old,
                                        load_ms=(time.perf_counter() - t0) * 1e3)

    @rpc_errors("Status")
    @admin_only
    async def Status(self, request, context):
        p = self.pipeline
        w, led, model = p.world, p.ledger, p.world.manifest.get("model", {})
        resp = admin_pb2.StatusResponse(
            world_version=w.version, world_path=str(w.path),
            execution_provider=p.scorer.provider,
            available_providers=p.scorer.available_providers,
            model_auc=model.get("auc", 0.0), ground_truth_auc=model.get("ground_truth_auc", 0.0),
            users=len(w.user_ids), ads=w.ad_index.ntotal, campaigns_count=len(w.campaigns),
            uptime_s=time.monotonic() - self.started_at,
            events_total=int(metrics.EVENTS._value.get()), bids_total=int(metrics.BIDS._value.get()),
            faiss_threads=p.retriever.threads, onnx_intra_op_threads=p.scorer.intra_op_threads,
            top_k=p.retriever.top_k, version=adbid.__version__, late_wins=led.late_wins,
            expired_reservations=led.expired,
            ledger_path=str(led.store.path) if led.store else "(in memory only)",
            worker=self.cfg.worker_index, workers=self.cfg.workers)
        resp.campaigns.extend(self._campaign_status(i) for i in range(len(p.campaign_ids)))
        for stage, s in p.timers.summary().items():
            resp.stages.add(stage=stage, count=s["count"], mean_us=s["mean_us"],
                            p50_us=s["p50_us"], p99_us=s["p99_us"])
        return resp


class Health(health.aio.HealthServicer):
    """gRPC's health service, whose Watch streams end once the server drains, right after
    telling their watcher NOT_SERVING. A watcher's stream is a call in flight like any
    other: left open, it would hold every drain for the whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._draining = asyncio.Event()

    async def Watch(self, request, context) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait((watch, draining), return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            elif not watch.cancelled():
                watch.result()  # the stream broke (the watcher left): its error, not a warning
        if self._draining.is_set():  # the last word, even if the watcher's was already sent
            await context.write(health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.NOT_SERVING))

    async def drain(self) -> None:
        """Every service NOT_SERVING from now on; open Watch streams say so and end."""
        await self.enter_graceful_shutdown()
        self._draining.set()


class BidServer:
    """A running adbid server: `await start()`, then `await stop()`."""

    def __init__(self, cfg: ServerConfig, world: World | None = None) -> None:
        self.cfg = cfg
        self.world = world
        self.port = 0
        self.metrics_port = 0
        self._metrics_http = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        cfg = self.cfg
        if cfg.admin_port < 0 and not cfg.admin_token and not is_loopback(cfg.host):
            raise OSError(f"Admin on the main port {cfg.host}:{cfg.port} needs --admin-token "
                          "(or keep it on its own loopback port with --admin-port)")
        credentials = tls_credentials(cfg)  # fail on a bad TLS setup before loading anything
        self.started_at = time.monotonic()
        world = self.world or await asyncio.to_thread(World.load, cfg.world)
        stages = await asyncio.to_thread(NativeStages, world, cfg)
        self.ledger = SpendLedger(world.campaigns, open_store(cfg.ledger, cfg.ledger_sync),
                                  cfg.reservation_ttl_s, share=(cfg.worker_index, cfg.workers))
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
        self.server = grpc.aio.server(options=options)
        self.health = Health()
        self.bidder = BidderService(self, cfg)
        self.server.add_generic_rpc_handlers((self.bidder.handlers(),))
        admin = AdminService(self, cfg, self.started_at)
        self.admin_server = None if admin_on_main else grpc.aio.server(
            options=[*options[:2], ("grpc.so_reuseport", 0)])  # each worker its own
        admin_target = self.server if admin_on_main else self.admin_server
        admin_pb2_grpc.add_AdminServicer_to_server(admin, admin_target)
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
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.admin_port = self.port
        if self.admin_server is not None:
            self.admin_port = self.admin_server.add_insecure_port(
                f"{cfg.admin_host}:{cfg.admin_port}")
            if self.admin_port == 0:
                raise OSError(f"cannot listen on {cfg.admin_host}:{cfg.admin_port} (admin)")
            await self.admin_server.start()
        await self.server.start()
        await self._warm_up(self.pipeline)
        if cfg.metrics_port:
            self._metrics_http, _ = start_http_server(max(cfg.metrics_port, 0), addr=cfg.host)
            self.metrics_port = self._metrics_http.server_port
        self._last_counts = (0, 0)
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
        log.info("%sserving world %s on %s:%d (%s), admin on %s:%d%s, metrics %s, provider %s",
                 f"worker {cfg.worker_index + 1}/{cfg.workers}: " if cfg.workers > 1 else "",
                 world.version, cfg.host, self.port,
                 "mutual TLS" if cfg.tls_client_ca else "TLS" if credentials else "plaintext",
                 cfg.admin_host if self.admin_server else cfg.host, self.admin_port,
                 " (token required)" if cfg.admin_token else "",
                 f"http://{cfg.host}:{self.metrics_port}/metrics" if self.metrics_port else "off",
                 self.pipeline.scorer.provider)
        return self.port

    async def _set_health(self, status) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _test_batch(self, pipeline: Pipeline, n: int, seed: int) -> bidder_pb2.BidResponse:
        """Synthetic test traffic (no budget, frequency or spend effects) through every stage."""
        events = make_events(n, np.random.default_rng(seed), test=True, id_prefix="calibrate-")
        return await self.bidder.bid(bidder_pb2.BidRequest(batch_id="calibration", events=events),
                                     time.monotonic() + 30.0, pipeline=pipeline)

    async def _warm_up(self, pipeline: Pipeline) -> None:
        """Two passes of test batches of several sizes through `pipeline`: the first warms
        caches and is forgotten, the second seeds the stage-cost model (per batch and per
        event), on which every deadline check depends."""
        logs.request_id.set("warm-up")
        cap = max(1, self.cfg.max_batch_events)
        sizes = sorted({min(cap, n) for n in (1, 16, 64, 256, 1024)})
        for warm_pass in range(2):
            if warm_pass == 1:
                pipeline.costs.reset()
            for i, n in enumerate(sizes):
                resp = await self._test_batch(pipeline, n, seed=warm_pass * 100 + i)
                if len(resp.decisions) != n or any(
                        d.no_bid_reason == bidder_pb2.NO_BID_REASON_DEADLINE
                        for d in resp.decisions):
                    raise RuntimeError(f"warm-up answered {len(resp.decisions)} of {n} events")
        log.info("warm-up on %s: batches of %s events, %d us for the last",
                 pipeline.world.version, sizes, resp.server_latency_us)
        logs.request_id.set("")

    async def _recalibrate_if_starved(self) -> None:
        """After a second that shed far more batches than it completed, pull the cost model toward
        reality. It learns only from admitted batches, so a transient spike can leave it
        stuck high, shedding everything. Two test batches measure the cost now; every
        stage's estimate then moves toward that, at most halving a second, never below
        it. A genuinely overloaded server reopens admission gradually, and the batches it
        admits teach the model the contended cost again."""
        p = self.pipeline
        shed, done = p.shed_batches, p.completed_batches
        last_shed, last_done = self._last_counts
        self._last_counts = (shed, done)
        if not (shed - last_shed > 10 * (done - last_done) and shed > last_shed):
            return
        logs.request_id.set("calibration")
        stuck = p.costs.stages
        p.costs.stages = {}
        n = p.typical_batch
        for i, size in enumerate((max(1, n // 4), n)):
            await self._test_batch(p, size, seed=int(time.time()) + i)
        quiet = p.costs.stages
        for name, cost in stuck.items():
            now = quiet.get(name)
            if now is None or cost.expect(n) <= 0:
                continue
            factor = max(0.5, min(1.0, now.expect(n) / cost.expect(n)))
            cost.scale(factor)
            cost.scatter_s = max(now.scatter_s, cost.scatter_s * factor)
        p.costs.stages = {**quiet, **stuck}
        log.info("starved: stage costs pulled toward the %.1f ms measured now",
                 quiet["total"].expect(n) * 1e3 if "total" in quiet else 0.0)
        logs.request_id.set("")
        self._last_counts = (p.shed_batches, p.completed_batches)

    async def reload(self, path: str) -> None:
        """Load, validate and warm a world beside the current one, then swap it in.

        Raises ReloadRefused with the reason; the running world is untouched then.
        """
        async with self._reload_lock:
            old = self.pipeline
            try:
                world = await asyncio.to_thread(World.load, path)
                stages = await asyncio.to_thread(NativeStages, world, self.cfg)
                new = Pipeline(stages, self.cfg, self.ledger, previous=old)
                await self._warm_up(new)
            except Exception as exc:  # any failure refuses the world: the old one keeps serving
                metrics.ERRORS.labels("reload_refused").inc()
                log.error("reload of %s refused: %s", path, exc)
                raise ReloadRefused(f"world {path} refused: {exc}") from None
            self.pipeline = new
            metrics.WORLD.info({"version": world.version, "path": str(world.path)})
            metrics.PROVIDER.info({"provider": new.scorer.provider})
            log.info("reloaded: now serving %s (was %s)", world.version, old.world.version)
            self._tasks.append(asyncio.create_task(self._retire(old)))

    async def _retire(self, old: Pipeline) -> None:
        """Close a replaced pipeline once its in-flight batches have finished."""
        deadline = time.monotonic() + 60
        while old.inflight_batches and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(old.close)

    async def _housekeeping(self) -> None:
        """Once a second: release expired reservations, update pacing, recalibrate."""
        ledger = self.ledger
        while True:
            await asyncio.sleep(1.0)
            try:
                released = ledger.expire()
                if released:
                    log.info("released %d expired reservations", len(released))
                    metrics.EXPIRED.inc(len(released))
                await ledger.flush()
                if ledger.compact_if_needed():
                    log.info("ledger compaction queued")
                self.pipeline.update_pacing()
                await self._recalibrate_if_starved()
            except Exception:
                log.exception("housekeeping failed")
                metrics.ERRORS.labels("housekeeping").inc()

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls for the grace period, stop."""
        await self.health.drain()
        for task in self._tasks:
            task.cancel()
        grace = self.cfg.grace_s if grace_s is None else grace_s
        if self.admin_server is not None:
            await self.admin_server.stop(grace)
        await self.server.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.pipeline.close()
        await self.ledger.flush()
        self.ledger.close()
        log.info("stopped")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is too."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_client_ca:
            raise OSError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise OSError("TLS needs both --tls-cert and --tls-key")
    ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)


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

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

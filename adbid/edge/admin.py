"""The Admin service: Status, Reload and UpdateCampaign, behind an optional bearer token."""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

import adbid
from adbid.config import ServerConfig
from adbid.edge.bidder import Tally
from adbid.edge.errors import NotFound, PartlyApplied, Unauthenticated
from adbid.edge.relay import WorkerRelay
from adbid.metrics import StageTimers
from adbid.money.shared import redacted
from adbid.stages.pipeline import Pipeline
from adbid.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


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
    """`current()` is the pipeline now serving; `reload(path)` swaps in another world."""

    def __init__(self, current: Callable[[], Pipeline], reload: Callable[[str], Awaitable[None]],
                 timers: StageTimers, tally: Tally, cfg: ServerConfig) -> None:
        self.current = current
        self.reload = reload
        self.timers = timers
        self.tally = tally
        self.cfg = cfg
        self.started_at = time.monotonic()
        self.relay: WorkerRelay | None = None  # --workers: changes go to the others too

    async def _everywhere(self, method: str, request, context) -> None:
        """Under --workers, a change made here is made on the other workers too (unless it
        came from one); PartlyApplied when some could not make it."""
        if self.relay is None or self.relay.from_peer(context):
            return
        auth = tuple((k, v) for k, v in context.invocation_metadata() or ()
                     if k == "authorization")
        failed = await self.relay.admin_to_others(method, request, auth)
        if failed:
            log.error("%s made on worker %d but not on: %s", method, self.cfg.worker_index,
                      "; ".join(failed))
            raise PartlyApplied(f"{method}: made on worker {self.cfg.worker_index} but not "
                                f"on {'; '.join(failed)}; repeat it (it is idempotent)")

    def _campaign_status(self, p: Pipeline, row: int) -> admin_pb2.CampaignStatus:
        led, shared = p.ledger, p.ledger.shared
        status = admin_pb2.CampaignStatus(
            campaign_id=p.campaign_ids[row], active=bool(led.active[row]),
            budget_micros=int(led.budget_micros[row]), spent_micros=int(led.spent_micros[row]),
            reserved_micros=int(led.reserved_micros[row]),
            pacing_multiplier=float(p.core.pacing[row]),
            pacing_mode=p.world.campaigns.pacing_mode[row],
            planned_spend_micros=int(p.pacing.planned_micros[row]))
        if shared is not None:
            status.budget_micros = int(shared.global_budget[row])
            status.global_spent_micros = int(shared.global_spent[row])
            status.global_leased_micros = int(shared.global_leased[row])
            status.lease_micros = int(shared.lease[row])
        return status

    @admin_only
    async def UpdateCampaign(self, request, context):
        """Validate, write to the ledger, apply; answers with the campaign after the change."""
        p = self.current()
        if p.ledger.shared is not None:  # every replica's budget: Redis's
            row = p.ledger.row_of.get(request.campaign_id, -1)
            if row < 0:
                raise NotFound(f"campaign_id: no campaign {request.campaign_id!r}")
            await p.ledger.shared.update(
                row, request.budget_micros if request.HasField("budget_micros") else None,
                request.active if request.HasField("active") else None)
            log.info("campaign %s changed in the shared books (%s)", request.campaign_id,
                     request.reason or "no reason given")
            return admin_pb2.UpdateCampaignResponse(campaign=self._campaign_status(p, row))
        try:
            row = p.ledger.update_campaign(
                request.campaign_id,
                request.budget_micros if request.HasField("budget_micros") else None,
                request.active if request.HasField("active") else None,
                request.reason)
        except KeyError:
            raise NotFound(f"campaign_id: no campaign {request.campaign_id!r}") from None
        await p.ledger.flush()
        await self._everywhere("UpdateCampaign", request, context)
        return admin_pb2.UpdateCampaignResponse(campaign=self._campaign_status(p, row))

    @admin_only
    async def Reload(self, request, context):
        old = self.current().world
        t0 = time.perf_counter()
        await self.reload(request.world_path or str(old.path))
        await self._everywhere("Reload", request, context)
        return admin_pb2.ReloadResponse(world_version=self.current().world.version,
                                        previous_version=old.version,
                                        load_ms=(time.perf_counter() - t0) * 1e3)

    @admin_only
    async def Status(self, request, context):
        p = self.current()
        w, led, model = p.world, p.ledger, p.world.manifest.get("model", {})
        resp = admin_pb2.StatusResponse(
            world_version=w.version, world_path=str(w.path),
            execution_provider=p.scorer.provider,
            available_providers=p.scorer.available_providers,
            model_auc=model.get("auc", 0.0), ground_truth_auc=model.get("ground_truth_auc", 0.0),
            users=len(w.user_ids), ads=w.ad_index.ntotal, campaigns_count=len(w.campaigns),
            uptime_s=time.monotonic() - self.started_at,
            events_total=self.tally.events, bids_total=self.tally.bids,
            faiss_threads=p.retriever.threads, onnx_intra_op_threads=p.scorer.intra_op_threads,
            top_k=p.top_k, version=adbid.__version__, late_wins=led.late_wins,
            expired_reservations=led.expired, in_doubt_reservations=len(led.doubt),
            ledger_path=str(led.store.path) if led.store else "(in memory only)",
            worker=self.cfg.worker_index, workers=self.cfg.workers,
            model_ece=model.get("ece", 0.0),
            model_calibration=model.get("calibration", {}).get("method", ""))
        if led.shared is not None:
            resp.shared_store = redacted(led.shared.url)
            resp.shared_process = led.shared.pid
            resp.shared_available = led.shared.available
            resp.shared_syncs, resp.shared_failures = led.shared.syncs, led.shared.failures
            try:
                for pid, leased, reported, expires in await led.shared.processes():
                    resp.shared_processes.add(process=pid, leased_micros=leased,
                                              reported_spent_micros=reported,
                                              expires_in_s=expires)
            except (TimeoutError, RedisError, OSError) as exc:  # Status answers regardless
                log.warning("Status: the shared books could not be read: %s", exc)
        resp.campaigns.extend(self._campaign_status(p, i) for i in range(len(p.campaign_ids)))
        for stage, s in self.timers.summary().items():
            resp.stages.add(stage=stage, count=s["count"], mean_us=s["mean_us"],
                            p50_us=s["p50_us"], p99_us=s["p99_us"])
        return resp

"""The pipeline of DESIGN.md for one batch: lookup -> retrieval -> scoring -> decision.

Decode and encode are the protobuf edges (adbid.server calls them). Retrieval
and scoring release the GIL and run together on a small executor, so batches
overlap; lookup and the decision core run inline on the event-loop thread,
which is the only thread that touches budgets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from adbid.config import ServerConfig
from adbid.decision import Decisions, DecisionCore
from adbid.decode import EventBatch
from adbid.ledger import SpendLedger, open_store
from adbid.lookup import ContextEncoder, UserLookup, resolve
from adbid.metrics import StageTimers
from adbid.pacing import PacingController
from adbid.retrieval import Retriever
from adbid.scoring import Scorer
from adbid.v1 import bidder_pb2 as pb
from adbid.world import World

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, world: World, cfg: ServerConfig, timers: StageTimers | None = None) -> None:
        self.world = world
        self.cfg = cfg
        self.users = UserLookup(world)
        self.contexts = ContextEncoder(world)
        self.retriever = Retriever(world.ad_index, cfg.top_k, cfg.faiss_threads)
        self.scorer = Scorer(world.model_path, world.dim, world.ad_index.ntotal,
                             intra_op_threads=cfg.onnx_threads, spinning=cfg.onnx_spinning,
                             use_gpu=cfg.use_gpu, require_gpu=cfg.require_gpu)
        self.ledger = SpendLedger(world.campaigns, open_store(cfg.ledger, cfg.ledger_sync),
                                  cfg.reservation_ttl_s)
        self.core = DecisionCore(world.campaigns, world.ad_campaign, self.ledger, cfg.shading,
                                 cfg.frequency_slots)
        self.pacing = PacingController(world.campaigns, self.ledger, self.core.pacing,
                                       now_s=time.time())
        self.campaign_ids = list(world.campaigns.ids)
        self.creative_ids = world.ad_creative_ids.tolist()
        self.timers = timers or StageTimers()
        self.executor = ThreadPoolExecutor(cfg.native_threads, thread_name_prefix="adbid-native")
        # Recent native (retrieval + scoring) seconds per event, for deadline checks.
        self._native_s_per_event = 0.0

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.ledger.close()

    def _native(self, query: np.ndarray, user: np.ndarray, context: np.ndarray,
                device: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        t0 = time.perf_counter()
        cand_ad = self.retriever.search(query)
        t1 = time.perf_counter()
        score = self.scorer.score(user, context, device, cand_ad)
        return cand_ad, score, t1 - t0, time.perf_counter() - t1

    def update_pacing(self) -> None:
        self.pacing.update(time.time())

    def expected_native_s(self, n_events: int) -> float:
        return self._native_s_per_event * n_events

    async def decide(self, batch: EventBatch, deadline: float) -> Decisions:
        """Decide a decoded batch; `deadline` is a time.monotonic() instant.

        Events that cannot be decided before the deadline get NO_BID_REASON_DEADLINE
        and reserve nothing; invalid events get NO_BID_REASON_INVALID_EVENT. Returns
        once the batch's reservations are durable in the ledger.
        """
        n = len(batch)
        timers = self.timers
        t0 = time.perf_counter()
        knows = self.ledger.knows
        for i, rid in enumerate(batch.request_id):
            if knows(rid) and i not in batch.errors:
                batch.errors[i] = "request_id: already used by an earlier bid"
        blocked = np.zeros(n, dtype=bool)
        if batch.errors:
            blocked[list(batch.errors)] = True
        rows = self.users.rows(batch.user_id)
        user = self.users.embeddings(rows)
        context = self.contexts.embeddings(batch.context_text)
        query = user + context
        resolve(batch, self.world.campaigns)
        t1 = time.perf_counter()
        timers.record("lookup", t1 - t0)

        if time.monotonic() + self.expected_native_s(n) > deadline:
            return self._no_bid(batch, blocked, pb.NO_BID_REASON_DEADLINE)
        loop = asyncio.get_running_loop()
        cand_ad, score, t_retrieval, t_scoring = await loop.run_in_executor(
            self.executor, self._native, query, user, context, batch.device_type)
        timers.record("retrieval", t_retrieval)
        timers.record("scoring", t_scoring)
        if n:
            per_event = (t_retrieval + t_scoring) / n
            self._native_s_per_event += 0.2 * (per_event - self._native_s_per_event)
        if time.monotonic() > deadline:
            return self._no_bid(batch, blocked, pb.NO_BID_REASON_DEADLINE)

        t2 = time.perf_counter()
        dec = self.core.decide(batch, cand_ad, score, blocked, now_s=int(time.time()))
        live = dec.bid & (batch.is_test == 0)
        if live.any():
            idx = np.flatnonzero(live)
            self.ledger.record_bids([batch.request_id[i] for i in idx], dec.campaign_row[idx],
                                    dec.price_cpm_micros[idx], batch.user_key[idx])
        dec.reason[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        t3 = time.perf_counter()
        timers.record("decision", t3 - t2)
        await self.ledger.flush()
        timers.record("ledger", time.perf_counter() - t3)
        return dec

    def _no_bid(self, batch: EventBatch, blocked: np.ndarray, reason: int) -> Decisions:
        n = len(batch)
        reasons = np.full(n, reason, dtype=np.int32)
        reasons[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        return Decisions(bid=np.zeros(n, bool), candidate=np.full(n, -1, np.int32),
                         ad_row=np.full(n, -1, np.int64), campaign_row=np.full(n, -1, np.int32),
                         price_cpm_micros=np.zeros(n, np.int64),
                         value_cpm_micros=np.zeros(n, np.int64),
                         score=np.zeros(n, np.float32), reason=reasons)

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

from adbid._fpmode import flush_denormals
from adbid.config import ServerConfig
from adbid.stages.decision import Decisions, DecisionCore
from adbid.stages.batch import EventBatch
from adbid.edge.encode import id_table
from adbid.money.ledger import SpendLedger
from adbid.stages.lookup import ContextEncoder, UserLookup, resolve
from adbid import metrics
from adbid.metrics import StageTimers
from adbid.money.pacing import PacingController
from adbid.stages.retrieval import Retriever
from adbid.stages.scoring import Scorer
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World

log = logging.getLogger(__name__)

FIXED_STAGE_S = 20e-6  # a stage never costs less than this, whatever the batch size


TAIL_MARGIN = 3.0  # estimates add this many mean absolute residuals: deadlines are about tails


class StageCost:
    """Recent cost of one stage by batch size, plus a margin for its recent scatter, since a
    deadline is missed in the tail, not the mean.

    Batch sizes fall into power-of-two classes; each class keeps an EWMA of its batch
    size and cost. A size between two seen classes is interpolated between them, a size
    above the largest is scaled from it per event, one below the smallest costs what the
    smallest does. (A least-squares fit of a + b * n was tried first: fed batches of one
    size, its covariance winds up, and one odd-sized batch then swung its estimate to
    seconds, which shed every batch.) Plain floats: this runs several times a batch.
    """

    ALPHA = 0.1  # EWMA weight of a new observation

    def __init__(self) -> None:
        self.classes: dict[int, list[float]] = {}  # size class -> [mean events, mean seconds]
        self._keys: list[int] = []  # the classes seen, ascending (expect runs ~10x a batch)
        self.scatter_s = 0.0  # EWMA of |observed - expected|
        self.seen = 0

    def observe(self, seconds: float, n_events: int) -> None:
        if self.seen:
            self.scatter_s += self.ALPHA * (abs(seconds - self.expect(n_events)) - self.scatter_s)
        self.seen += 1
        key = max(n_events, 1).bit_length()
        c = self.classes.get(key)
        if c is None:
            self.classes[key] = [float(n_events), seconds]
            self._keys = sorted(self.classes)
            return
        c[0] += self.ALPHA * (n_events - c[0])
        c[1] += self.ALPHA * (seconds - c[1])

    def scale(self, factor: float) -> None:
        """Multiply every class's cost by `factor` (recalibration)."""
        for c in self.classes.values():
            c[1] *= factor

    def expect(self, n_events: int) -> float:
        """The mean cost for a batch of this size (seconds)."""
        if not self.classes:
            return FIXED_STAGE_S
        key = max(n_events, 1).bit_length()
        below = above = None
        for k in self._keys:
            if k <= key:
                below = self.classes[k]
            elif above is None:
                above = self.classes[k]
        if below is None:  # smaller than anything seen
            return max(FIXED_STAGE_S, above[1])
        n0, s0 = below
        if n_events <= n0:
            estimate = s0
        elif above is None:  # larger than anything seen: per event
            estimate = s0 * n_events / max(n0, 1.0)
        else:
            n1, s1 = above
            estimate = s0 + (s1 - s0) * (n_events - n0) / max(n1 - n0, 1.0)
        return max(FIXED_STAGE_S, estimate)


class StageCosts:
    """What each stage, and a whole batch end to end, has recently cost; to decide whether a
    batch still fits its deadline.

    Stage means add up; their tails do not (summing per-stage margins sheds everything
    under contention), so one margin is added: the scatter of the end-to-end time.
    """

    def __init__(self) -> None:
        self.stages: dict[str, StageCost] = {}

    def reset(self) -> None:
        self.stages.clear()

    def observe(self, stage: str, seconds: float, n_events: int) -> None:
        cost = self.stages.get(stage)
        if cost is None:
            cost = self.stages[stage] = StageCost()
        cost.observe(seconds, n_events)

    def margin(self) -> float:
        """TAIL_MARGIN scatters of the end-to-end time, capped at half its mean: under heavy
        contention the scatter balloons and an uncapped margin sheds everything."""
        total = self.stages.get("total")
        if total is None:
            return 0.0
        return min(TAIL_MARGIN * total.scatter_s, 0.5 * total.expect(256))

    def mean(self, n_events: int, stage: str) -> float:
        """One stage's mean cost, no margin."""
        return self.stages[stage].expect(n_events) if stage in self.stages else FIXED_STAGE_S

    def expect(self, n_events: int, *stages: str) -> float:
        """Mean cost of these stages for a batch of n events, plus the tail margin."""
        return self.margin() + sum(self.stages[s].expect(n_events) if s in self.stages
                                   else FIXED_STAGE_S for s in stages)

    def expect_total(self, n_events: int) -> float:
        """A whole batch, decode to encode, as admitted batches have recently taken (with
        whatever contention there was), plus the tail margin."""
        total = self.stages.get("total")
        if total is None:
            return self.expect(n_events, *ALL_STAGES)
        return total.expect(n_events) + self.margin()


class Shed(Exception):
    """A batch could not make its deadline at this stage."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


# What must still fit after the native stages. "resume" is the event loop's lag: the time
# from a thread's result (or the ledger's write) being ready to the loop running the batch
# again; under load the loop is busy with other batches, and two such waits follow.
TAIL = ("decision", "ledger", "encode", "resume", "resume")
ALL_STAGES = ("decode", "lookup", "retrieval", "scoring", *TAIL)


class NativeStages:
    """The expensive, world-specific parts: embedding stores, FAISS, the onnxruntime
    session. Built off the event loop (start-up, reload); holds no money state."""

    def __init__(self, world: World, cfg: ServerConfig) -> None:
        self.world = world
        self.users = UserLookup(world)
        self.contexts = ContextEncoder(world)
        self.retriever = Retriever(world.ad_index, cfg.top_k, cfg.faiss_threads)
        self.scorer = Scorer(world.model_path, world.dim, world.ad_index.ntotal,
                             intra_op_threads=cfg.onnx_threads, spinning=cfg.onnx_spinning,
                             use_gpu=cfg.use_gpu, require_gpu=cfg.require_gpu)


class Pipeline:
    """One world's stages bound to the process's ledger. Built on the event-loop thread.

    `previous`: the pipeline being replaced by a reload; its frequency counters,
    pacing state and stage costs carry over, and the shared ledger is extended
    with the new world's campaigns (which must extend the old campaign list).
    """

    def __init__(self, stages: NativeStages, cfg: ServerConfig, ledger: SpendLedger,
                 previous: Pipeline | None = None) -> None:
        world = stages.world
        self.world, self.cfg, self.stages = world, cfg, stages
        self.users, self.contexts = stages.users, stages.contexts
        self.retriever, self.scorer = stages.retriever, stages.scorer
        ledger.extend(world.campaigns)
        self.ledger = ledger
        self.core = DecisionCore(world.campaigns, world.ad_campaign, ledger, cfg.shading,
                                 cfg.frequency_slots,
                                 frequency=previous.core.frequency if previous else None)
        self.pacing = PacingController(world.campaigns, ledger, self.core.pacing,
                                       now_s=time.time())
        if previous is not None:
            self.pacing.inherit(previous.pacing)
        self.campaign_ids = list(world.campaigns.ids)
        self.creative_ids = world.ad_creative_ids.tolist()
        self.campaign_table, self.creative_table = id_table(self.campaign_ids), \
            id_table(self.creative_ids)
        self.timers = previous.timers if previous else StageTimers()
        self.costs = previous.costs if previous else StageCosts()
        # Retrieval and scoring run here, subnormal floats flushed to zero (see _fpmode).
        self.executor = ThreadPoolExecutor(cfg.native_threads, thread_name_prefix="adbid-native",
                                           initializer=flush_denormals)
        self.inflight_batches = 0  # admitted and not yet answered
        self.peak_inflight_batches = 0
        self.shed_batches = 0  # answered DEADLINE for want of time, at any stage
        self.completed_batches = 0  # decided in full
        self.typical_batch = 256  # recent batch size (EWMA), for recalibration

    def close(self) -> None:
        """Stop this pipeline's threads (the ledger is the server's, closed separately)."""
        self.executor.shutdown(wait=True)

    def _native(self, query: np.ndarray, user: np.ndarray, context: np.ndarray,
                device: np.ndarray, deadline: float,
                submitted: float) -> tuple[np.ndarray, np.ndarray, float, float, float, float]:
        """Retrieval then scoring, on an executor thread; raises Shed when time runs out."""
        n, costs = len(query), self.costs
        t0 = time.perf_counter()
        queued = t0 - submitted
        if time.monotonic() + costs.expect(n, "retrieval", "scoring", *TAIL) > deadline:
            raise Shed("queue")
        cand_ad = self.retriever.search(query)
        t1 = time.perf_counter()
        if time.monotonic() + costs.expect(n, "scoring", *TAIL) > deadline:
            raise Shed("scoring")
        score = self.scorer.score(user, context, device, cand_ad)
        t2 = time.perf_counter()
        return cand_ad, score, queued, t1 - t0, t2 - t1, t2

    def update_pacing(self) -> None:
        self.pacing.update(time.time())

    async def decide(self, batch: EventBatch,
                     deadline: float) -> tuple[Decisions, asyncio.Future | None]:
        """Decide a decoded batch; `deadline` is a time.monotonic() instant.

        Before each costly stage the time left is checked against that stage's
        recent cost (and what must follow it); when it does not fit, every event
        gets NO_BID_REASON_DEADLINE and nothing is reserved. Invalid events get
        NO_BID_REASON_INVALID_EVENT. Returns the decisions and, unless the batch was shed
        (None then), a future that is done once everything journalled so far, this batch's
        reservations included, is durable in the ledger: the caller encodes meanwhile and
        awaits it with `durable(...)` before answering.
        """
        n = len(batch)
        timers, costs = self.timers, self.costs
        t0 = time.perf_counter()
        for i in self.ledger.used(batch.request_id):
            batch.errors.setdefault(i, "request_id: already used by an earlier bid")
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
        costs.observe("lookup", t1 - t0, n)

        loop = asyncio.get_running_loop()
        try:
            if time.monotonic() + costs.expect(n, "retrieval", "scoring", *TAIL) > deadline:
                raise Shed("retrieval")
            cand_ad, score, queued, t_retrieval, t_scoring, t_done = await loop.run_in_executor(
                self.executor, self._native, query, user, context, batch.device_type, deadline,
                time.perf_counter())
            lag = time.perf_counter() - t_done
            timers.record("resume", lag)
            costs.observe("resume", lag, n)
            timers.record("queue", queued)
            timers.record("retrieval", t_retrieval)
            timers.record("scoring", t_scoring)
            costs.observe("retrieval", t_retrieval, n)
            costs.observe("scoring", t_scoring, n)
            if time.monotonic() + costs.expect(n, *TAIL) > deadline:
                raise Shed("decision")
        except Shed as shed:
            metrics.SHED.labels(shed.stage).inc(n)
            self.shed_batches += 1
            return self._no_bid(batch, blocked, pb.NO_BID_REASON_DEADLINE), None

        t2 = time.perf_counter()
        dec = self.core.decide(batch, cand_ad, score, blocked, now_s=int(time.time()))
        live = dec.bid & (batch.is_test == 0)
        if live.any():
            idx = np.flatnonzero(live)
            rids = batch.request_id
            self.ledger.record_bids([rids[i] for i in idx.tolist()], dec.campaign_row[idx],
                                    dec.price_cpm_micros[idx], batch.user_key[idx])
        dec.reason[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        commit = self.ledger.commit()  # written here and now when the ledger's writer is idle
        t3 = time.perf_counter()
        timers.record("decision", t3 - t2)
        costs.observe("decision", t3 - t2, n)
        self.completed_batches += 1
        self.typical_batch = max(1, int(0.9 * self.typical_batch + 0.1 * n))
        return dec, commit

    def withdraw(self, batch: EventBatch, dec: Decisions) -> int:
        """Release the reservations (and frequency counts) of a decided batch whose answer
        will not be sent; returns how many bids were withdrawn. Journalled as losses."""
        now = int(time.time())
        withdrawn = 0
        for i in np.flatnonzero(dec.bid & (batch.is_test == 0)).tolist():
            released = self.ledger.apply(batch.request_id[i], pb.OUTCOME_TYPE_LOSS, 0).released
            if released is not None:
                self.core.release_frequency(released, now)
                withdrawn += 1
        return withdrawn

    async def durable(self, commit: asyncio.Future | None, n_events: int) -> None:
        """Wait for a batch's reservations to be durable (what is left of the write after
        encoding overlapped it); timed as the "ledger" stage."""
        if commit is None:
            return
        t0 = time.perf_counter()
        await commit
        spent = time.perf_counter() - t0
        self.timers.record("ledger", spent)
        self.costs.observe("ledger", spent, n_events)

    def _no_bid(self, batch: EventBatch, blocked: np.ndarray, reason: int) -> Decisions:
        n = len(batch)
        reasons = np.full(n, reason, dtype=np.int32)
        reasons[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        return Decisions(bid=np.zeros(n, bool), candidate=np.full(n, -1, np.int32),
                         ad_row=np.full(n, -1, np.int64), campaign_row=np.full(n, -1, np.int32),
                         price_cpm_micros=np.zeros(n, np.int64),
                         value_cpm_micros=np.zeros(n, np.int64),
                         score=np.zeros(n, np.float32), reason=reasons)

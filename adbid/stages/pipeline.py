"""The pipeline of one batch: lookup -> retrieval -> scoring -> decision.

Decode and encode belong to the edges; the deadline rule and the cost model to the
flow wing, which hands each batch a `Clock`. Retrieval and scoring release the GIL
and run together on a small executor, so batches overlap (where they run: see
adbid.stages.native); lookup and the decision core run inline on the event-loop
thread, which is the only thread that touches budgets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Protocol

import numpy as np

from adbid import metrics
from adbid._fpmode import flush_denormals
from adbid.config import ServerConfig
from adbid.money.ledger import SpendLedger
from adbid.money.pacing import PacingController
from adbid.stages import DECISION, LEDGER, LOOKUP, QUEUE, RESUME, RETRIEVAL, SCORING, TAIL
from adbid.stages.batch import EventBatch
from adbid.stages.decision import ANSWERED_BEFORE, DecisionCore, Decisions
from adbid.stages.depth import DeeperSearch
from adbid.stages.lookup import ContextEncoder, UserLookup, resolve
from adbid.stages.native import NativeWork, flushed, merged, parts, within_part
from adbid.stages.retries import answer_again, retried_events
from adbid.stages.retrieval import Retriever, showable
from adbid.stages.scoring import Scorer
from adbid.stages.shading import ServedShading
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World

log = logging.getLogger(__name__)
LOOKS = 2  # second looks a refused event may get, each K further down (adbid.stages.depth)


class OutOfTime(Exception):
    """A batch cannot make its deadline at this point (`point`: where it was found)."""

    def __init__(self, point: str) -> None:
        super().__init__(point)
        self.point = point


class Clock(Protocol):
    """What the pipeline asks of a batch's deadline (adbid.flow.deadlines.Deadline)."""

    def check(self, point: str, n_events: int, *ahead: str) -> None:
        """Raise OutOfTime(point) unless the stages `ahead` still fit."""

    def record(self, stage: str, seconds: float, n_events: int, learn: bool = True) -> None:
        """A stage took this long for this batch."""

    def shed(self, point: str, n_events: int) -> None:
        """The batch was answered DEADLINE at this point."""


class Events(Protocol):
    """Any batch of events by request id and test flag (what withdrawing needs)."""

    @property
    def request_id(self) -> Sequence[str]: ...

    @property
    def is_test(self) -> np.ndarray: ...


class WorldStages:
    """The stages bound to one world: user and context lookup, the FAISS index, the
    onnxruntime session. Built off the event loop (start-up, reload); holds no money."""

    def __init__(self, world: World, cfg: ServerConfig,
                 previous: WorldStages | None = None) -> None:
        """`previous`: the stages serving now; those whose world parts the new world took
        over unchanged (World.shared) are shared, not built again."""
        self.world = world
        shared = world.shared if previous is not None else ()
        self.users: UserLookup = previous.users if previous and "users" in shared else \
            UserLookup(world)
        self.contexts: ContextEncoder = previous.contexts \
            if previous and "contexts" in shared else ContextEncoder(world)
        self.retriever: Retriever = previous.retriever if previous and "index" in shared else \
            Retriever(world.ad_index, cfg.top_k, cfg.faiss_threads)
        self.scorer: Scorer = previous.scorer if previous and "model" in shared else \
            Scorer(world.model_path, world.dim, world.ad_index.ntotal,
                   intra_op_threads=cfg.onnx_threads, spinning=cfg.onnx_spinning,
                   use_gpu=cfg.use_gpu, require_gpu=cfg.require_gpu, gpu_io=cfg.gpu_io,
                   warm=(cfg.top_k, cfg.max_batch_events))


class Pipeline:
    """One world's stages bound to the process's ledger. Built on the event-loop thread.

    `previous`: the pipeline being replaced by a reload; its frequency counters and
    pacing state carry over, and the shared ledger is extended with the new world's
    campaigns (which must extend the old campaign list).
    """

    def __init__(self, stages: WorldStages, cfg: ServerConfig, ledger: SpendLedger,
                 previous: Pipeline | None = None) -> None:
        world = stages.world
        self.world = world
        self.stages = stages
        self.users, self.contexts = stages.users, stages.contexts
        self.retriever, self.scorer = stages.retriever, stages.scorer
        self.inline_events, self.split_events = cfg.inline_events, cfg.split_events
        self.native_threads = cfg.native_threads
        # (batch, cand_ad, score) -> first-price factor per event (adbid.stages.shading);
        # None: the constant --shading.
        self.shading_policy: Callable[[EventBatch, np.ndarray, np.ndarray],
                                      np.ndarray] | None = None
        ledger.extend(world.campaigns)
        self.ledger = ledger
        self.top_k = cfg.top_k
        self.depth = DeeperSearch(self.retriever, world, ledger, cfg.top_k, cfg.overfetch)
        self.core: DecisionCore = DecisionCore(
            world.campaigns, world.ad_campaign, ledger, cfg.shading, cfg.frequency_slots,
            frequency=previous.core.frequency if previous else None)
        if ledger.shared is not None and cfg.redis_frequency:  # counts across replicas
            ledger.shared.bind_frequency(self.core.frequency, world.campaigns)
            self.core.counted = ledger.shared.counted
        self.pacing = PacingController(world.campaigns, ledger, self.core.pacing,
                                       now_s=time.time(), profile=cfg.pacing_weights())
        if previous is not None:
            self.pacing.inherit(previous.pacing)
        if cfg.shading_policy == "learned":
            served = ServedShading(cfg.shading, world.ad_campaign,
                                   world.campaigns.value_per_action_micros, self.core.pacing)
            if previous is not None and isinstance(previous.shading_policy, ServedShading):
                served.inherit(previous.shading_policy)
            self.shading_policy = served
        self.campaign_ids = list(world.campaigns.ids)
        self.creative_ids = world.ad_creative_ids.tolist()
        # Retrieval and scoring run here, subnormal floats flushed to zero (see _fpmode). A
        # reload takes over the running pipeline's threads, warm as they are; the last
        # pipeline to hold them shuts them down.
        self.executor: ThreadPoolExecutor
        if previous is not None and previous.owns_executor:
            self.executor = previous.executor
            previous.owns_executor = False
        else:
            self.executor = ThreadPoolExecutor(cfg.native_threads,
                                               thread_name_prefix="adbid-native",
                                               initializer=flush_denormals)
        self.owns_executor: bool = True
        self.running = 0  # batches inside run() now (a replaced pipeline waits for 0)
        self.unspecified_first_price = cfg.unspecified_auction == "first"

    def close(self) -> None:
        """Stop this pipeline's threads unless a newer pipeline took them over (the ledger
        is the server's, closed separately)."""
        if self.owns_executor:
            self.executor.shutdown(wait=True)

    def _native(self, query: np.ndarray, user: np.ndarray, context: np.ndarray,
                device: np.ndarray, clock: Clock, submitted: float,
                within: list[tuple[int, np.ndarray]], n: int) -> NativeWork:
        """Retrieval then scoring of a batch or a part of it (the deadline checked for the
        batch's n events), on an executor thread; raises OutOfTime. `within`: events
        searched among given ads only (position, ad rows)."""
        t0 = time.perf_counter()
        clock.check(QUEUE, n, RETRIEVAL, SCORING, *TAIL)
        cand_ad = self.retriever.search(query)
        for i, ads in within:
            cand_ad[i] = self.retriever.search_within(query[i], ads)
        t1 = time.perf_counter()
        clock.check(SCORING, n, SCORING, *TAIL)
        score = self.scorer.score(user, context, device, cand_ad)
        t2 = time.perf_counter()
        return NativeWork(cand_ad, score, t0 - submitted, t1 - t0, t2 - t1, t2)

    async def _retrieve_and_score(self, query: np.ndarray, user: np.ndarray,
                                  context: np.ndarray, device: np.ndarray, clock: Clock,
                                  within: list[tuple[int, np.ndarray]]) -> NativeWork:
        """On this thread for a small batch; else on a native thread, or, when no other
        batch is in the pipeline, cut in parts: the first on this thread, the others on
        native threads at once (adbid.stages.native)."""
        n = len(query)
        loop, submitted = asyncio.get_running_loop(), time.perf_counter()
        cuts = [slice(0, n)]
        if n > self.inline_events:
            cuts = parts(n, self.native_threads if self.running == 1 else 1, self.split_events)
            if len(cuts) == 1:
                return await loop.run_in_executor(self.executor, self._native, query, user,
                                                  context, device, clock, submitted, within, n)
        handed = [loop.run_in_executor(self.executor, self._native, query[s], user[s],
                                       context[s], device[s], clock, submitted,
                                       within_part(within, s), n) for s in cuts[1:]]
        works: list[NativeWork] = []
        try:
            with flushed():  # as on the native threads; this thread's own mode after
                s = cuts[0]
                works.append(self._native(query[s], user[s], context[s], device[s], clock,
                                          submitted, within_part(within, s), n))
        finally:  # the parts handed off are waited for, so no failure goes unseen
            done = await asyncio.gather(*handed, return_exceptions=True) if handed else []
        for part in done:
            if isinstance(part, BaseException):
                raise part
            works.append(part)
        return merged(works)

    def _searched_within(self, batch: EventBatch) -> list[tuple[int, np.ndarray]]:
        """Events limited to a few campaigns (private auctions) are retrieved among those
        campaigns' ads alone."""
        if batch.deal_campaigns is None:
            return []
        ad_campaign = self.world.ad_campaign
        return [(i, np.flatnonzero(np.isin(ad_campaign, list(campaigns))))
                for i, campaigns in enumerate(batch.deal_campaigns) if campaigns]

    def update_pacing(self) -> None:
        self.pacing.update(time.time())

    def refit_shading(self) -> None:
        """Learned shading (--shading-policy learned): fold in what notices said."""
        if isinstance(self.shading_policy, ServedShading):
            metrics.SHADING_OBSERVATIONS.inc(self.shading_policy.refit())
            metrics.SHADING_SEGMENTS.set(self.shading_policy.known_segments())

    async def run(self, batch: EventBatch,
                  clock: Clock) -> tuple[Decisions, asyncio.Future | None]:
        """Decide a decoded batch within `clock`'s deadline.

        Before each costly stage the clock checks that stage and what must follow it;
        when they do not fit, every event gets NO_BID_REASON_DEADLINE and nothing is
        reserved. Invalid events get NO_BID_REASON_INVALID_EVENT. Returns the decisions
        and, unless the batch was shed (None then), a future that is done once everything
        journalled so far, this batch's reservations included, is durable in the ledger:
        the caller encodes meanwhile and awaits it with `durable(...)` before answering.
        """
        self.running += 1
        try:
            return await self._run(batch, clock)
        finally:
            self.running -= 1

    async def _run(self, batch: EventBatch,
                   clock: Clock) -> tuple[Decisions, asyncio.Future | None]:
        n = len(batch)
        t0 = time.perf_counter()
        retried = retried_events(self.ledger, batch)
        blocked = np.zeros(n, dtype=bool)
        if batch.errors:
            blocked[list(batch.errors)] = True
        rows = self.users.rows(batch.user_id)
        user = self.users.embeddings(rows)
        context = self.contexts.embeddings(batch.context_text)
        query = user + context
        resolve(batch, self.world.campaigns)
        t1 = time.perf_counter()
        clock.record(LOOKUP, t1 - t0, n)

        try:
            clock.check(RETRIEVAL, n, RETRIEVAL, SCORING, *TAIL)
            within = self._searched_within(batch)
            cand_ad, score, queued, t_retrieval, t_scoring, t_done = \
                await self._retrieve_and_score(query, user, context, batch.device_type, clock,
                                               within)
            clock.record(RESUME, time.perf_counter() - t_done, n)
            clock.record(QUEUE, queued, n, learn=False)
            clock.record(RETRIEVAL, t_retrieval, n)
            clock.record(SCORING, t_scoring, n)
            clock.check(DECISION, n, *TAIL)
        except OutOfTime as late:
            clock.shed(late.point, n)
            return self._no_bid(batch, blocked, pb.NO_BID_REASON_DEADLINE), None

        t2 = time.perf_counter()
        if retried:
            blocked[list(retried)] = True  # answered from the first decision below
        if self.unspecified_first_price and batch.unspecified_auction is not None:
            batch.first_price = batch.first_price | batch.unspecified_auction
        tried, cand_ad = cand_ad, showable(self.world, batch, cand_ad)
        dec = self._decide(batch, cand_ad, score, blocked)
        self._record(batch, dec, np.flatnonzero(dec.bid))  # before an await: retries see them
        won = await self._second_look(batch, dec, tried, (query, user, context), blocked,
                                      within, clock)
        self._record(batch, dec, won)
        if self.ledger.shared is not None:
            self.ledger.shared.reasons(dec.reason)
        if retried:
            blocked[list(retried)] = False
            answer_again(dec, retried)
        dec.reason[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        commit = self.ledger.commit()  # written here and now when the ledger's writer is idle
        clock.record(DECISION, time.perf_counter() - t2, n)
        return dec, commit

    def _decide(self, batch: EventBatch, cand_ad: np.ndarray, score: np.ndarray,
                blocked: np.ndarray) -> Decisions:
        shading = None if self.shading_policy is None else \
            self.shading_policy(batch, cand_ad, score)
        return self.core.decide(batch, cand_ad, score, blocked, now_s=int(time.time()),
                                shading=shading)

    def _record(self, batch: EventBatch, dec: Decisions, bid: np.ndarray) -> None:
        """Journal the reservations of the bids at these positions (live traffic's)."""
        idx = bid[batch.is_test[bid] == 0]
        if not len(idx):
            return
        assert batch.user_key is not None  # resolved by the lookup stage
        self.ledger.record_bids([batch.request_id[i] for i in idx.tolist()],
                                dec.campaign_row[idx], dec.price_cpm_micros[idx],
                                batch.user_key[idx],
                                hold_ms=batch.hold_ms[idx] if batch.hold_ms is not None else None,
                                answers=(batch.fingerprints(idx), dec.ad_row[idx],
                                         dec.value_cpm_micros[idx], dec.score[idx]))

    async def _second_look(self, batch: EventBatch, dec: Decisions, tried: np.ndarray,
                           vectors: tuple[np.ndarray, ...], blocked: np.ndarray,
                           within: list[tuple[int, np.ndarray]], clock: Clock) -> np.ndarray:
        """Events refused for their candidates get the next admitted ones of a deeper search,
        scored (on a native thread unless the batch is small) and decided, up to LOOKS
        times, while the deadline leaves time and no other batch is in the pipeline (they
        spend spare capacity; adbid.stages.depth). In place; returns the positions that bid."""
        won = np.empty(0, np.int64)
        searched = None  # the first look's deeper search, which later looks go on down
        rows = self.depth.retry_rows(dec, blocked, within) \
            if self.depth.enabled and self.running == 1 else won
        for _ in range(LOOKS):
            if not len(rows):
                break
            try:
                clock.check(DECISION, len(batch), RETRIEVAL, SCORING, DECISION, *TAIL)
            except OutOfTime:
                break
            if len(batch) <= self.inline_events:
                with flushed():
                    found, cand, score, searched = self._look_deeper(batch, rows, tried,
                                                                     vectors, searched)
            else:
                found, cand, score, searched = await asyncio.get_running_loop(
                ).run_in_executor(self.executor, self._look_deeper, batch, rows, tried,
                                  vectors, searched)
            others = ~np.isin(np.arange(len(batch)), rows)
            # A request id that bid in another batch meanwhile (a retry) does not bid twice.
            others[rows[self.ledger.used([batch.request_id[i] for i in rows.tolist()])]] = True
            again = self._decide(batch, cand, score, others)
            now = np.flatnonzero(again.bid & ~others)
            metrics.SECOND_LOOK_BIDS.inc(len(now))
            for f in fields(Decisions):
                getattr(dec, f.name)[now] = getattr(again, f.name)[now]
            won = np.concatenate([won, now])
            rows = self.depth.retry_rows(again, others, within)
            tried = np.hstack([tried, found])  # those it cannot show included: not again
        return np.sort(won)

    def _look_deeper(self, batch: EventBatch, rows: np.ndarray, tried: np.ndarray,
                     vectors: tuple[np.ndarray, ...], searched) -> tuple:
        """A look's candidates (-1 but for `rows`), the showable ones, scores, the search."""
        query, user, context = vectors
        found, searched = self.depth.next_candidates(query, batch, rows, tried,
                                                     self.retriever.top_k, searched)
        cand = showable(self.world, batch, found)
        score = np.zeros(cand.shape, np.float32)
        score[rows] = self.scorer.score(user[rows], context[rows], batch.device_type[rows],
                                        cand[rows])
        return found, cand, score, searched

    def withdraw(self, batch: Events, dec: Decisions) -> int:
        """Release the reservations (and frequency counts) of a decided batch whose answer
        will not be sent; returns how many bids were withdrawn. Journalled as losses. A
        retried bid's reservation stays: its first answer may have reached the exchange."""
        now = int(time.time())
        withdrawn = 0
        fresh = dec.bid & (batch.is_test == 0) & (dec.candidate != ANSWERED_BEFORE)
        for i in np.flatnonzero(fresh).tolist():
            released = self.ledger.apply(batch.request_id[i], pb.OUTCOME_TYPE_LOSS, 0).released
            if released is not None:
                self.core.release_frequency(released, now)
                withdrawn += 1
        return withdrawn

    @staticmethod
    async def durable(commit: asyncio.Future | None, clock: Clock, n_events: int) -> None:
        """Wait for a batch's reservations to be durable (what is left of the write after
        encoding overlapped it); timed as the ledger stage."""
        if commit is None:
            return
        t0 = time.perf_counter()
        await commit
        clock.record(LEDGER, time.perf_counter() - t0, n_events)

    def _no_bid(self, batch: EventBatch, blocked: np.ndarray, reason: int) -> Decisions:
        n = len(batch)
        reasons = np.full(n, reason, dtype=np.int32)
        reasons[blocked] = pb.NO_BID_REASON_INVALID_EVENT
        return Decisions(bid=np.zeros(n, bool), candidate=np.full(n, -1, np.int32),
                         ad_row=np.full(n, -1, np.int64), campaign_row=np.full(n, -1, np.int32),
                         price_cpm_micros=np.zeros(n, np.int64),
                         value_cpm_micros=np.zeros(n, np.int64),
                         score=np.zeros(n, np.float32), reason=reasons)

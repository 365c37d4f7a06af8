"""Deadlines: the rule that sets them, the stage-cost model that checks them, shedding,
withholding, and their counters. Every deadline decision of adbid is made here.

The rule. A batch's deadline is the tighter of the caller's (the gRPC deadline, or
`deadline_ms` in the request) and, when neither is given, the server default; the send
margin comes off it, since the way back to the caller is part of the caller's time.
`Deadline.at` is the last moment an answer may leave.

Checks, in the order a batch meets them:
- on arrival: not even an answer fits -> the call fails with DEADLINE_EXCEEDED at once
  (`Unmeetable`); the whole batch does not fit -> every event is answered DEADLINE
  ("shed" at "arrival");
- before each costly stage the pipeline asks `Deadline.check` whether that stage and
  all that must follow still fit; when not, the batch is shed at that stage;
- when the answer is ready after `at`, it is withheld (DEADLINE_EXCEEDED) and its bids
  withdrawn (`Deadline.withhold_if_late`): an answer that arrives late can neither win
  nor be billed, so its reservations go back at once.

The cost model learns from every stage of every batch (`Deadline.record`); checks use
its recent means plus a tail margin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from adbid import metrics, stages
from adbid.metrics import StageTimers
from adbid.stages.batch import EventBatch
from adbid.stages.decision import Decisions
from adbid.stages.pipeline import OutOfTime, Pipeline

log = logging.getLogger(__name__)

ARRIVAL = "arrival"  # shed before any work
ADMISSION = "admission"  # refused by the admission limit (on a stream: answered DEADLINE)
SHED_POINTS = (ARRIVAL, ADMISSION, stages.QUEUE, stages.RETRIEVAL, stages.SCORING,
               stages.DECISION)


class Unmeetable(RuntimeError):
    """Not even a no-bid answer fits before the deadline, or the answer was ready too late
    (DEADLINE_EXCEEDED)."""


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
            assert above is not None  # there is at least one class
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
        total = self.stages.get(stages.TOTAL)
        if total is None:
            return 0.0
        return min(TAIL_MARGIN * total.scatter_s, 0.5 * total.expect(256))

    def mean(self, n_events: int, stage: str) -> float:
        """One stage's mean cost, no margin."""
        return self.stages[stage].expect(n_events) if stage in self.stages else FIXED_STAGE_S

    def expect(self, n_events: int, *names: str) -> float:
        """Mean cost of these stages for a batch of n events, plus the tail margin."""
        return self.margin() + sum(self.stages[s].expect(n_events) if s in self.stages
                                   else FIXED_STAGE_S for s in names)

    def expect_total(self, n_events: int) -> float:
        """A whole batch, decode to encode, as admitted batches have recently taken (with
        whatever contention there was), plus the tail margin."""
        total = self.stages.get(stages.TOTAL)
        if total is None:
            return self.expect(n_events, *stages.ALL)
        return total.expect(n_events) + self.margin()




class Timekeeper:
    """One per server, across reloads: the stage-cost model, the stage timers, the deadline
    rule's settings, and the counters of what was admitted, shed, completed and withheld."""

    def __init__(self, default_deadline_ms: float, send_margin_ms: float) -> None:
        self.default_s = default_deadline_ms / 1000
        self.margin_s = send_margin_ms / 1000
        self.costs = StageCosts()
        self.timers = StageTimers(stages.STAGES)
        self.inflight_batches = 0  # admitted and not yet answered
        self.peak_inflight_batches = 0
        self.shed_batches = 0  # answered DEADLINE for want of time, at any point
        self.completed_batches = 0  # decided in full
        self.withheld_batches = 0  # ready after their deadline, never sent
        self.typical_batch = 256  # recent batch size (EWMA), for recalibration
        self._last_counts = (0, 0)
        for point in SHED_POINTS:
            metrics.SHED.labels(point)

    def deadline(self, deadline_ms: float, remaining_s: float | None) -> Deadline:
        """The rule: the tighter of the call's and the request's deadline (each only when
        given), else the default; less the send margin. Taken now, on arrival."""
        limits = [s for s in (remaining_s, deadline_ms / 1000 if deadline_ms > 0 else None)
                  if s is not None]
        budget = min(limits) if limits else self.default_s
        return Deadline(self, time.monotonic() + budget - self.margin_s, budget)

    def unbounded(self, seconds: float = 30.0, learn: bool = True) -> Deadline:
        """A deadline far off, for warm-up and calibration batches; `learn=False`: its stage
        costs are not taught to the model (a reload's check)."""
        return Deadline(self, time.monotonic() + seconds, seconds, learn)

    def begin(self) -> None:
        self.inflight_batches += 1
        self.peak_inflight_batches = max(self.peak_inflight_batches, self.inflight_batches)
        metrics.INFLIGHT.inc()

    def end(self) -> None:
        self.inflight_batches -= 1
        metrics.INFLIGHT.dec()

    def shed(self, point: str, n_events: int) -> None:
        metrics.SHED.labels(point).inc(n_events)
        self.shed_batches += 1

    async def run(self, pipeline: Pipeline, batch: EventBatch,
                  deadline: Deadline) -> tuple[Decisions, asyncio.Future | None]:
        """One batch through the pipeline, counted in flight while it runs."""
        self.begin()
        try:
            return await pipeline.run(batch, deadline)
        finally:
            self.end()

    def finished(self, seconds: float, n_events: int, shed: bool, learn: bool = True) -> None:
        """A batch answered in `seconds` from arrival; a batch decided in full is a sample of
        the real end-to-end cost (unless `learn` is False)."""
        self.timers.record(stages.TOTAL, seconds)
        if not shed and learn:
            self.costs.observe(stages.TOTAL, seconds, n_events)
            self.completed_batches += 1
            self.typical_batch = max(1, int(0.9 * self.typical_batch + 0.1 * n_events))

    def starved(self) -> bool:
        """True after a second (between two calls) that shed far more batches than it
        completed."""
        shed, done = self.shed_batches, self.completed_batches
        last_shed, last_done = self._last_counts
        self._last_counts = (shed, done)
        return shed > last_shed and shed - last_shed > 10 * (done - last_done)

    async def recalibrate(self, measure: Callable[[int], Awaitable[object]]) -> None:
        """Pull a cost model stuck high toward what batches cost now.

        The model learns only from admitted batches, so a transient spike can leave it
        stuck high, shedding everything. `measure(n)` runs one test batch of n events;
        two of them measure the cost now, and every stage's estimate moves toward that,
        at most halving a call, never below it. A genuinely overloaded server reopens
        admission gradually, and the batches it admits teach the model the contended
        cost again.
        """
        stuck = self.costs.stages
        self.costs.stages = {}
        n = self.typical_batch
        for size in (max(1, n // 4), n):
            await measure(size)
        quiet = self.costs.stages
        for name, cost in stuck.items():
            now = quiet.get(name)
            if now is None or cost.expect(n) <= 0:
                continue
            factor = max(0.5, min(1.0, now.expect(n) / cost.expect(n)))
            cost.scale(factor)
            cost.scatter_s = max(now.scatter_s, cost.scatter_s * factor)
        self.costs.stages = {**quiet, **stuck}
        total = quiet.get(stages.TOTAL)
        log.info("starved: stage costs pulled toward the %.1f ms measured now",
                 total.expect(n) * 1e3 if total else 0.0)
        self._last_counts = (self.shed_batches, self.completed_batches)


class Deadline:
    """One batch's deadline: `at` (time.monotonic()) is the last moment its answer may
    leave; `budget_s` the time it was given on arrival, before the send margin."""

    __slots__ = ("at", "budget_s", "keeper", "learn")

    def __init__(self, keeper: Timekeeper, at: float, budget_s: float,
                 learn: bool = True) -> None:
        self.keeper, self.at, self.budget_s = keeper, at, budget_s
        self.learn = learn  # False: this batch's stage costs are timed, not taught

    def left(self) -> float:
        return self.at - time.monotonic()

    def admits(self, n_events: int) -> bool:
        """On arrival: False when the whole batch cannot fit (shed: the caller answers every
        event DEADLINE); raises Unmeetable when not even such an answer fits."""
        if not n_events:
            return True
        costs, left = self.keeper.costs, self.left()
        if left < costs.mean(n_events, stages.ENCODE):
            self.keeper.shed(ARRIVAL, n_events)
            raise Unmeetable(f"deadline: {max(left, 0) * 1e3:.2f} ms left cannot cover an "
                             f"answer for {n_events} events")
        if left < costs.expect_total(n_events):
            self.keeper.shed(ARRIVAL, n_events)
            return False
        return True

    def check(self, point: str, n_events: int, *ahead: str) -> None:
        """Raise OutOfTime(point) unless the stages `ahead` still fit (the pipeline's check
        before each costly stage)."""
        if time.monotonic() + self.keeper.costs.expect(n_events, *ahead) > self.at:
            raise OutOfTime(point)

    def record(self, stage: str, seconds: float, n_events: int, learn: bool = True) -> None:
        """A stage took `seconds` for this batch: timed, and (with `learn`) taught to the
        cost model."""
        self.keeper.timers.record(stage, seconds)
        if learn and self.learn:
            self.keeper.costs.observe(stage, seconds, n_events)

    def shed(self, point: str, n_events: int) -> None:
        self.keeper.shed(point, n_events)

    def withhold_if_late(self, withdraw: Callable[[], int]) -> None:
        """Never answer late: an answer ready after `at` could not arrive in time. Its bids
        are withdrawn (`withdraw()` returns how many) and Unmeetable is raised."""
        over = time.monotonic() - self.at
        if over <= 0:
            return
        withdrawn = withdraw()
        self.keeper.withheld_batches += 1
        metrics.LATE_ANSWERS.inc()
        margin_ms = self.keeper.margin_s * 1e3
        log.warning("answer ready %.2f ms after it had to leave (the deadline less the "
                    "%.1f ms send margin): withheld, %d bids withdrawn",
                    over * 1e3, margin_ms, withdrawn)
        raise Unmeetable(f"deadline: the answer was ready {over * 1e3:.2f} ms after it had "
                         f"to leave (the deadline less the {margin_ms:g} ms send margin) and "
                         f"was withheld; its {withdrawn} bids were withdrawn")

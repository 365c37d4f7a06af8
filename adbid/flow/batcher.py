"""The dynamic batcher: small batches from concurrent callers become one pipeline batch.

An exchange sends one request per auction; the pipeline is fastest on batches.
Callers (an OpenRTB request's impressions, a gRPC Bid of a few events) hand their
decoded events and their deadline to `decide`, and get exactly their own decisions
back. A gathered batch is sent to the pipeline:

- at once, when fewer gathered batches are running than `parallel` (the server
  uses one: a busy pipeline gathers) and no other caller is expected soon: when
  callers come faster than one a `window`, an idle pipeline waits for them up to
  `window` after the first one waiting (and no longer than another caller is
  expected within it), so that under load batches are larger and each request costs
  less; slower traffic is sent at once;
- when it is full (`max_events`);
- when waiting longer would cost its most urgent member its deadline: at that
  member's deadline less what a batch of the gathered size is expected to take,
  end to end (the stage-cost model);
- when a running batch finishes and frees the pipeline.

The gathered batch runs under its most urgent member's deadline; every member then
checks its own deadline before answering. Batches of different pipelines (a reload
in progress) are never mixed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adbid import metrics
from adbid.flow.deadlines import Deadline, Timekeeper
from adbid.stages.batch import EventBatch
from adbid.stages.decision import Decisions
from adbid.stages.pipeline import Pipeline

log = logging.getLogger(__name__)

Outcome = tuple[Decisions, "asyncio.Future | None"]
RATE_TAU_S = 0.1  # time constant of the callers' arrival rate


class Gatherable(Protocol):
    """What a caller hands the batcher: events that know how to merge with others of
    their kind into one pipeline batch (EventBatch; the edges' row form)."""

    errors: dict[int, str]

    def __len__(self) -> int: ...

    @staticmethod
    def concat(parts: Sequence[Any]) -> EventBatch: ...


@dataclass
class _Waiting:
    batch: Gatherable
    deadline: Deadline
    pipeline: Pipeline
    arrived: float  # time.monotonic()
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class Batcher:
    """`run(pipeline, batch, deadline)` decides one gathered batch (the pipeline's run,
    with the flow's accounting around it)."""

    def __init__(self, keeper: Timekeeper, run: Callable[[Pipeline, EventBatch, Deadline],
                                                           Awaitable[Outcome]],
                 max_events: int, parallel: int, window_s: float = 0.0) -> None:
        if max_events < 1 or parallel < 1 or window_s < 0:
            raise ValueError("batcher: max_events and parallel must be at least 1, the "
                             "window at least 0")
        self.keeper = keeper
        self.run = run
        self.max_events = max_events
        self.parallel = parallel
        self.window = window_s
        self.rate = 0.0  # callers a second, smoothed over RATE_TAU_S
        self._rate_at = time.monotonic()
        self.waiting: list[_Waiting] = []
        self.waiting_events = 0
        self.running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.batches = 0  # gathered batches sent to the pipeline
        self.gathered = 0  # callers' batches that went into them

    async def decide(self, batch: Gatherable, deadline: Deadline,
                     pipeline: Pipeline) -> Outcome:
        """The caller's own decisions, and the commit future of the batch they were part
        of (None when it was shed)."""
        now = time.monotonic()
        item = _Waiting(batch, deadline, pipeline, now)
        if self.window:  # the arrival rate only matters to the window
            self.rate = self.rate * math.exp((self._rate_at - now) / RATE_TAU_S) + 1 / RATE_TAU_S
            self._rate_at = now
        self.waiting.append(item)
        self.waiting_events += len(batch)
        pipeline.running += 1  # waiting counts as running: a reload must not close it yet
        try:
            self._consider()
            return await item.answer
        finally:
            pipeline.running -= 1

    def _held_until(self) -> float | None:
        """When an idle pipeline waits for more callers: the end of the window, while
        another caller is expected before it (at the smoothed arrival rate); else None."""
        if not self.window or self.waiting_events >= self.max_events:
            return None
        ends = self.waiting[0].arrived + self.window
        now = time.monotonic()
        rate = self.rate * math.exp((self._rate_at - now) / RATE_TAU_S)
        return ends if rate * (ends - now) >= 1.0 else None

    def _consider(self) -> None:
        """Send a gathered batch now, or set the timer for when one must go."""
        held = None
        while self.waiting and (self.running < self.parallel
                                or self.waiting_events >= self.max_events):
            held = self._held_until()
            if held is not None:
                break
            self._send()
        if not self.waiting:
            self._cancel_timer()
            return
        urgent = min(w.deadline.at for w in self.waiting)
        close_at = urgent - self.keeper.costs.expect_total(
            min(self.waiting_events, self.max_events))
        if held is not None:
            close_at = min(close_at, held)
        if close_at <= time.monotonic():
            self._send()
            self._consider()
        elif close_at != self._timer_at:  # earlier, or later once a send took the urgent
            self._cancel_timer()
            loop = asyncio.get_running_loop()
            self._timer_at = close_at
            self._timer = loop.call_at(loop.time() + close_at - time.monotonic(), self._due)

    def _due(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self.waiting:
            self._send()
            self._consider()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")

    def _send(self) -> None:
        """Take waiting batches (oldest first, one pipeline, up to max_events; at least
        one) and start deciding them as one."""
        first = self.waiting[0]
        taken: list[_Waiting] = []
        events = 0
        for w in self.waiting:
            if w.pipeline is not first.pipeline or type(w.batch) is not type(first.batch):
                continue
            if taken and events + len(w.batch) > self.max_events:
                break
            taken.append(w)
            events += len(w.batch)
        chosen = set(map(id, taken))
        self.waiting = [w for w in self.waiting if id(w) not in chosen]
        self.waiting_events -= events
        self.running += 1
        self.batches += 1
        self.gathered += len(taken)
        now = time.monotonic()
        for w in taken:
            metrics.BATCHER_WAIT.observe(now - w.arrived)
        metrics.BATCHER_EVENTS.observe(events)
        task = asyncio.get_running_loop().create_task(self._decide(taken))
        task.add_done_callback(self._finished)

    async def _decide(self, taken: list[_Waiting]) -> None:
        urgent = min(taken, key=lambda w: w.deadline.at).deadline
        merged = type(taken[0].batch).concat([w.batch for w in taken])
        try:
            dec, commit = await self.run(taken[0].pipeline, merged, urgent)
        except BaseException as exc:  # every caller hears of it
            for w in taken:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for w in taken:
            stop = start + len(w.batch)
            if len(taken) > 1:  # problems the pipeline found go back to their caller
                for i in range(start, stop):
                    if i in merged.errors:
                        w.batch.errors.setdefault(i - start, merged.errors[i])
            if not w.answer.done():  # a caller that gave up (cancelled) is skipped
                w.answer.set_result((dec.part(start, stop), commit))
            start = stop

    def _finished(self, task: asyncio.Task) -> None:
        self.running -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher: a gathered batch failed", exc_info=task.exception())
        self._consider()

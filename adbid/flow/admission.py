"""Admission: how many batches may be in flight at once, adapted to what meets deadlines.

A fixed cap on batches in flight is either too low (idle cores) or too high: on
2 cores, 32 admitted batches of 64 events queue for longer than a 50 ms deadline,
every batch then pays for its stages only to be shed or answered late. The limit
here is additive-increase, multiplicative-decrease on each answered batch, as TCP
does for its window:

- a batch decided in well under its deadline (below `low` of its budget) raises
  the limit by 1/limit (about +1 per limit's worth of batches);
- a batch shed for time, or one that used more than `high` of its budget, cuts it
  by `cut`, at most once per `cooldown_s` (batches in flight together share one
  congestion episode; cutting once per batch would collapse the limit).

`high` is half the budget, not nearly all of it: a request also waits in gRPC's
and the client's queues, which the server cannot time, so the time it can see
must leave room for that (0.8 was tried: answers then reached clients late).

Batches above the limit are refused before they are parsed (RESOURCE_EXHAUSTED),
which costs next to nothing; a client retries them elsewhere or later.
"""

from __future__ import annotations

import asyncio
import time


class AdmissionLimit:
    def __init__(self, maximum: int, minimum: int = 1, initial: int | None = None,
                 low: float = 0.25, high: float = 0.5, cut: float = 0.75,
                 cooldown_s: float = 0.05) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"admission limits: need 1 <= minimum <= maximum, got "
                             f"{minimum}, {maximum}")
        self.minimum, self.maximum = minimum, maximum
        self.limit = float(initial if initial is not None else max(minimum, min(maximum, 4)))
        self.low, self.high, self.cut, self.cooldown_s = low, high, cut, cooldown_s
        self._last_cut = 0.0

    def admits(self, inflight: int) -> bool:
        return inflight < int(self.limit)

    def done(self, latency_s: float, budget_s: float, shed: bool) -> None:
        """One answered batch: its time from arrival to answer, its deadline budget, and
        whether any of it was shed for time."""
        used = latency_s / budget_s if budget_s > 0 else 1.0
        if shed or used > self.high:
            now = time.monotonic()
            if now - self._last_cut >= self.cooldown_s:
                self._last_cut = now
                self.limit = max(float(self.minimum), self.limit * self.cut)
        elif used < self.low:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)


class LoopLag:
    """How late the event loop runs what is due. A probe sleeps `interval_s` and measures
    how much later than asked it wakes. Every answer pays about this much before gRPC
    sends it, and requests wait about this much before their handler starts, so the
    admission limit counts it as latency (and it is exported as a metric). Rises at once,
    decays over ~10 probes. (Refusing work, or shortening deadlines, on the lag alone was
    tried: a reload's loading thread lags the loop as well, and requests failed.)"""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.recent_s = 0.0

    def observe(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.recent_s = lag_s if lag_s > self.recent_s else \
            self.recent_s + 0.1 * (lag_s - self.recent_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.observe(loop.time() - start - self.interval_s)

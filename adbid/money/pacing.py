"""Pacing: a PI controller per campaign sets the multiplier on value, about once a second.

"even" campaigns follow an even-spend plan over their flight (by default the
current UTC day): planned(t) = budget x elapsed fraction. A daily flight may
follow a traffic forecast instead (`profile`: 24 hourly weights, UTC hour 0
first, e.g. yesterday's requests per hour): planned(t) = budget x the share of
the day's traffic forecast before t, so a campaign spends as the day's
auctions come. The controller works on spend rate: the plan's rate now plus
the gap between the plan and the committed spend closed over `catchup_s` (a
campaign ahead of its plan is slowed until the plan catches up; one behind may
bid its full value), against the measured rate (smoothed). Committed spend
counts open reservations, which react sooner than settlement.

"asap" campaigns always bid their full value (multiplier 1).

The controller only writes the multiplier array that the decision core reads;
it never runs inside the hot loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adbid.money.ledger import SpendLedger
from adbid.world.campaigns import CampaignTable

DAY_S = 86_400
HOUR_S = 3_600


class TrafficShape:
    """A day's traffic forecast as a clock: share(frac) is the part of the day's traffic
    before that fraction of the day (piecewise linear within each hour); per_s(frac) the
    part that comes in one second then."""

    def __init__(self, weights: Sequence[float] | None) -> None:
        w = np.ones(24) if weights is None else np.asarray(weights, dtype=np.float64)
        self.density = w / w.sum()  # share of the day's traffic in each hour
        self.cumulative = np.concatenate([[0.0], np.cumsum(self.density)])

    def share(self, frac: np.ndarray) -> np.ndarray:
        hours = np.clip(frac, 0.0, 1.0) * 24
        return np.interp(hours, np.arange(25), self.cumulative)

    def per_s(self, frac: np.ndarray) -> np.ndarray:
        hour = np.clip((np.clip(frac, 0.0, 1.0) * 24).astype(np.int64), 0, 23)
        return self.density[hour] / HOUR_S


@dataclass
class PacingGains:
    kp: float = 0.6  # log-multiplier per unit of relative rate error
    ki: float = 0.004  # log-multiplier per unit of relative rate error per second
    smoothing_s: float = 60.0  # time constant of the measured spend rate
    min_multiplier: float = 0.02
    catchup_s: float = 900.0  # a gap between plan and spend is closed over this long


class PacingController:
    def __init__(self, campaigns: CampaignTable, ledger: SpendLedger, multipliers: np.ndarray,
                 gains: PacingGains | None = None, now_s: float = 0.0,
                 profile: Sequence[float] | None = None) -> None:
        self.ledger = ledger
        self.shape = TrafficShape(profile)  # daily flights plan along it
        self.multipliers = multipliers  # the decision core's array, written in place
        self.gains = gains or PacingGains()
        n = len(campaigns)
        self.even = np.array([m == "even" for m in campaigns.pacing_mode], dtype=bool)
        starts = [r.get("flight_start_unix_s") for r in campaigns.records]
        ends = [r.get("flight_end_unix_s") for r in campaigns.records]
        self.daily = np.array([s is None or e is None for s, e in zip(starts, ends)])
        self.start_s = np.array([s or 0 for s in starts], dtype=np.float64)
        self.end_s = np.array([e or 0 for e in ends], dtype=np.float64)
        self.planned_micros = np.zeros(n, dtype=np.int64)
        self._rate = np.zeros(n)  # smoothed committed-spend rate, micros/s
        self._integral = np.zeros(n)
        self._last_committed: np.ndarray | None = None
        self._last_s = now_s
        self._day: int | None = None
        self._day_base: np.ndarray = np.zeros(0, np.int64)

    def inherit(self, old: PacingController) -> None:
        """Carry the controller state of the campaigns both worlds have (the old rows)."""
        n = min(len(old._rate), len(self._rate))
        self._rate[:n] = old._rate[:n]
        self._integral[:n] = old._integral[:n]
        self.multipliers[:n] = old.multipliers[:n]
        if old._last_committed is not None:
            self._last_committed = np.zeros(len(self._rate))
            self._last_committed[:n] = old._last_committed[:n]
            self._last_s = old._last_s
        if old._day is not None:
            self._day = old._day
            self._day_base = np.zeros(len(self._rate))
            self._day_base[:n] = old._day_base[:n]

    def _flight(self, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        day_start = math.floor(now_s / DAY_S) * DAY_S
        start = np.where(self.daily, day_start, self.start_s)
        end = np.where(self.daily, day_start + DAY_S, self.end_s)
        return start, end

    def update(self, now_s: float) -> None:
        """One control step at Unix time now_s (seconds)."""
        led, g = self.ledger, self.gains
        budget_micros, committed_micros = led.pacing_view()
        committed = committed_micros.astype(np.float64)
        start, end = self._flight(now_s)
        budget = budget_micros.astype(np.float64)
        frac = np.clip((now_s - start) / np.maximum(end - start, 1.0), 0.0, 1.0)
        # A daily flight plans each day's share: spend before today's start counts as done.
        day = math.floor(now_s / DAY_S)
        if self._day is None or day != self._day:
            self._day_base = committed.copy()
            self._day = day
            self._last_committed = None
        spent_in_flight = np.where(self.daily, committed - self._day_base, committed)
        daily_budget = np.where(self.daily, budget - self._day_base, budget)
        # Daily flights plan along the day's traffic forecast (even without one).
        done = np.where(self.daily, self.shape.share(frac), frac)
        self.planned_micros = (daily_budget * done).astype(np.int64) + np.where(
            self.daily, self._day_base, 0).astype(np.int64)
        dt = now_s - self._last_s
        if self._last_committed is None or dt <= 0:
            self._last_committed, self._last_s = committed, now_s
            self.multipliers[~self.even] = 1.0
            return
        alpha = 1.0 - math.exp(-dt / g.smoothing_s)
        self._rate += alpha * ((committed - self._last_committed) / dt - self._rate)
        # The plan's rate now (the forecast's share of the day in this second) and the gap
        # to the plan, closed over catchup_s.
        plan_rate = np.where(self.daily, daily_budget * self.shape.per_s(frac),
                             budget / np.maximum(end - start, 1.0))
        left = np.maximum(daily_budget - spent_in_flight, 0.0)
        gap = (self.planned_micros - committed) / g.catchup_s
        target = np.maximum(plan_rate + gap, 0.0)
        # Relative to the plan's rate; a rate far above it counts up to 3x (a campaign
        # bursting ahead is cut within a step or two), one below it up to 1x.
        err = np.clip((target - self._rate) / np.maximum(plan_rate, 1e-9), -3.0, 1.0)
        in_flight = (now_s >= start) & (now_s < end)
        self._integral += np.where(in_flight, err * dt, 0.0)
        # Anti-windup: the integral may not push the multiplier far past its limits.
        bound = math.log(1.0 / g.min_multiplier) / max(g.ki, 1e-12)
        np.clip(self._integral, -bound, bound * 0.25, out=self._integral)
        log_m = np.clip(g.kp * err + g.ki * self._integral, math.log(g.min_multiplier), 0.0)
        m = np.where(self.even & in_flight, np.exp(log_m), 1.0)
        m[self.even & (left <= 0)] = g.min_multiplier  # budget for the flight is used up
        self.multipliers[:] = m
        self._last_committed, self._last_s = committed, now_s

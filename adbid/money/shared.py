"""Budgets shared by replicas through Redis: each process bids on leases of the budgets.

Redis holds, per campaign, the budget, the spend settled by every process, and the amount
leased out, with `spent + leased <= budget` kept by the scripts below (every
read-modify-write runs inside Redis, in Lua). A process (a replica, or one `--workers`
worker) names itself from its host, port and ledger, so several can share one machine.

Each sync (every `sync_s`, sooner when a lease is three-quarters used and its budget has
room; one script call for all campaigns) a process tells Redis, per
campaign, its settled spend as a running total from its own ledger (absolute, so a retried
or repeated sync counts nothing twice, and a restarted process continues where its ledger
is) and the lease it wants; Redis books the new spend (spent += the difference, and the
process's lease shrinks by it), grants up to the wanted lease within what the budget has
left, and answers with the global books. Locally the decision core's budget becomes
`reported spend + lease`, so the compiled core reserves and settles against the lease
exactly as against a whole budget, and never commits past it.

The lease rule: a lease covers the campaign's open reservations here plus a float of
`HORIZON_S` (2) seconds of this process's committed-spend rate (over at least a second; a
rise taken at once, a fall smoothed over 5 s), at least `float_micros` and at most a tenth
of the budget; a campaign with nothing committed here for `IDLE_S` (30 s) gets no float
(its lease shrinks to its open reservations and goes back to the pool). A smaller lease is
applied here before Redis hears of it, a larger one after Redis grants it, so this process
is never above its lease.

Faults. A sync that fails (Redis killed, paused or slow: `timeout_s`) changes nothing;
the process bids within the leases it holds until `ttl_s - 2 s` after its last
successful sync, then commits nothing more (no-bid BUDGET_UNAVAILABLE, as for any budget
refusal while Redis is away), and resumes at the next sync that succeeds. Redis gives a
lease back to the pool when its process has not synced for `ttl_s` of the time Redis was
serving syncs (a pause of every process, such as Redis's own outage, does not count),
keeping the part that covered the process's open reservations at its last sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from adbid.money.books import CampaignBooks
from adbid.money.redis_scripts import FREQ, SYNC, UPDATE
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

log = logging.getLogger(__name__)

def process_id(host: str, port: int, ledger: Path | None) -> str:
    """A name unique to this process and stable across its restarts: the machine and the
    ledger (whose spend it reports, so a restart continues from the same running total,
    whatever port it listens on); without a ledger, the machine and the address."""
    where = str(ledger.resolve()) if ledger is not None else f"{host}:{port}"
    digest = hashlib.sha1(f"{socket.gethostname()}|{where}".encode()).hexdigest()[:10]
    return f"{socket.gethostname()}/{digest}"


def redacted(url: str) -> str:
    """The URL without its password, for logs and Status."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


class SharedBudgets:
    """This process's side of the shared books; owns `books.budget_micros` (the lease
    limits the decision core reads) while attached."""

    HORIZON_S = 2.0
    FULL_EVERY = 10  # a sync in this many carries every campaign
    IDLE_S = 30.0
    STALL_S = 0.3  # a sync call waiting this long on Redis: refusals say UNAVAILABLE
    RATE_TC_S = 5.0  # time constant of the committed-spend rate

    def __init__(self, url: str, books: CampaignBooks, campaigns: CampaignTable, pid: str, *,
                 sync_s: float = 0.5, ttl_s: float = 30.0, float_micros: int = 100_000,
                 timeout_s: float = 1.0, prefix: str = "adbid:") -> None:
        self.url, self.books, self.pid, self.prefix = url, books, pid, prefix
        self.sync_s, self.ttl_s, self.float_micros = sync_s, ttl_s, float_micros
        self.client = aioredis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s)
        self._sync = self.client.register_script(SYNC)
        self._update = self.client.register_script(UPDATE)
        self._freq = self.client.register_script(FREQ)
        self.counted: list[tuple[np.ndarray, np.ndarray, int]] = []  # the core appends
        self.frequency = None
        self.freq_window_s = np.zeros(0, np.int64)
        self.world_budget = campaigns.budget_micros.astype(np.int64).copy()
        self.world_active = campaigns.active.copy()
        n = len(campaigns)
        self.lease = np.zeros(n, np.int64)
        self.floats = np.zeros(n, np.int64)  # what the last grant gave beyond reservations
        self.reported = books.spent_micros.copy()  # spend Redis has (assumed until a sync)
        self.global_budget = self.world_budget.copy()
        self.global_spent = np.zeros(n, np.int64)
        self.global_leased = np.zeros(n, np.int64)
        self._rate = np.zeros(n)
        self._last_committed = (books.spent_micros + books.reserved_micros).astype(np.float64)
        self._last_change = np.full(n, time.monotonic())
        self._last_t = time.monotonic()
        self.valid_until = 0.0  # monotonic time until which the leases may be used
        self.last_ok = 0.0  # monotonic time the last successful sync was sent
        self._sending_since: float | None = None  # a sync call in flight since then
        self.available = False
        self.syncs = self.failures = 0
        self.campaigns_synced = 0  # campaign entries sent, all syncs together
        self._sent = np.zeros((0, 3), np.int64)  # per campaign: total, committed, want sent
        self.last_error = ""
        # Nothing may be committed beyond what is already, until the first sync grants.
        books.budget_micros[:] = books.spent_micros + books.reserved_micros
        books.shared = self

    def extend(self, campaigns: CampaignTable) -> None:
        """A reloaded world added campaigns (the books grew already)."""
        extra = len(campaigns) - len(self.lease)
        if extra <= 0:
            return
        grow = lambda a, tail: np.concatenate([a, np.asarray(tail, a.dtype)])  # noqa: E731
        self.world_budget = grow(self.world_budget, campaigns.budget_micros[-extra:])
        self.world_active = grow(self.world_active, campaigns.active[-extra:])
        for name in ("lease", "floats", "reported", "global_spent", "global_leased"):
            setattr(self, name, grow(getattr(self, name), np.zeros(extra)))
        self.global_budget = grow(self.global_budget, campaigns.budget_micros[-extra:])
        self._rate = grow(self._rate, np.zeros(extra))
        self._last_committed = grow(self._last_committed, np.zeros(extra))
        self._last_change = grow(self._last_change, np.full(extra, time.monotonic()))
        b = self.books
        b.budget_micros[-extra:] = b.spent_micros[-extra:] + b.reserved_micros[-extra:]

    def bind_frequency(self, table, campaigns: CampaignTable) -> None:
        """The decision core's frequency table, and the campaigns' windows."""
        self.frequency = table
        self.freq_window_s = campaigns.freq_window_s.astype(np.int64)

    async def sync_frequency(self) -> None:
        """Push the counts added and given back here since the last push; take each key's
        count across replicas (plus what was counted here meanwhile) into the core's table.
        A user seen here for the first time is capped on this process's counts until then:
        across N replicas a user can exceed a cap by what N - 1 replicas show them between
        their first impression there and the next sync."""
        if not self.counted or self.frequency is None:
            return
        users, rows, deltas = self._aggregate(self.counted)
        del self.counted[:]
        ids = np.asarray(self.books.campaign_ids, dtype=object)[rows].tolist()
        window_ms = (self.freq_window_s[rows] * 1000).tolist()
        args: list = [self.prefix]
        for entry in zip(ids, users.tolist(), deltas.tolist(), window_ms):
            args += entry
        try:
            counts = await self._freq(args=args)
        except (TimeoutError, RedisError, OSError) as exc:  # pushed again next time (a lost
            # reply means counted twice: caps bind early, never late)
            self.counted[0:0] = [(users[deltas == d], rows[deltas == d], int(d))
                                 for d in np.unique(deltas)]
            self._failed(exc, time.monotonic())
            return
        target = np.asarray(counts, dtype=np.int64)
        if self.counted:  # counted here while the push was on its way: on top
            su, sr, sd = self._aggregate(self.counted)
            since = dict(zip(zip(su.tolist(), sr.tolist()), sd.tolist()))
            target += np.fromiter((since.get(k, 0) for k in zip(users.tolist(),
                                                                rows.tolist())),
                                  np.int64, count=len(users))
        self.frequency.set_counts(users, rows.astype(np.int32), self.freq_window_s[rows],
                                  np.maximum(target, 0), int(time.time()))

    @staticmethod
    def _aggregate(entries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user keys, campaign rows, summed deltas), one per distinct key."""
        keys = np.empty(sum(len(e[0]) for e in entries), [("u", np.uint64), ("r", np.int64)])
        keys["u"] = np.concatenate([e[0] for e in entries])
        keys["r"] = np.concatenate([e[1] for e in entries])
        deltas = np.concatenate([np.full(len(e[0]), e[2], np.int64) for e in entries])
        uniq, inverse = np.unique(keys, return_inverse=True)
        sums = np.bincount(inverse, weights=deltas, minlength=len(uniq)).astype(np.int64)
        return np.ascontiguousarray(uniq["u"]), np.ascontiguousarray(uniq["r"]), sums

    # -- the lease rule ---------------------------------------------------------------

    def wanted(self, now: float, drain: bool = False) -> np.ndarray:
        """Per campaign: the open reservations here plus the float (see the module)."""
        b = self.books
        committed = (b.spent_micros + b.reserved_micros).astype(np.float64)
        dt = max(now - self._last_t, 1e-3)
        grew = committed > self._last_committed
        self._last_change[grew] = now
        alpha = 1.0 - np.exp(-dt / self.RATE_TC_S)
        # Over at least a second: a bid or two in a short interval is no rate.
        rate_now = np.maximum(committed - self._last_committed, 0) / max(dt, 1.0)
        self._rate += alpha * (rate_now - self._rate)
        # A rise counts at once (a float used up before its next sync at least doubles
        # then; one running low syncs early), a fall slowly: the float follows demand up
        # quickly and hands money back over seconds.
        np.maximum(self._rate, rate_now, out=self._rate)
        self._last_committed, self._last_t = committed, now
        float_ = np.clip(self._rate * self.HORIZON_S, self.float_micros, self._cap())
        idle = (now - self._last_change) > self.IDLE_S
        float_[idle | (b.active == 0)] = 0
        if drain:
            float_[:] = 0
        return b.reserved_micros + float_.astype(np.int64)

    # -- syncing ----------------------------------------------------------------------

    async def sync(self, drain: bool = False) -> bool:
        """One round trip: report spend, set leases, read the global books. Only campaigns
        whose spend, reservations or wanted lease changed here since the last sync go;
        every FULL_EVERY-th sync (and a drain) carries them all, which is when this process
        sees others' spend and Admin's changes on the rest."""
        b = self.books
        now = time.monotonic()
        want = self.wanted(now, drain)
        total = b.spent_micros.copy()
        committed = total + b.reserved_micros
        if drain or not self.available or self.syncs % self.FULL_EVERY == 0 \
                or len(self._sent) != len(total):
            rows = np.arange(len(total))
        else:
            rows = np.flatnonzero((self._sent[:, 0] != total) | (self._sent[:, 1] != committed)
                                  | (self._sent[:, 2] != want))
        # Smaller leases take effect here first; larger ones once Redis grants them.
        b.budget_micros[rows] = np.minimum(b.budget_micros[rows], total[rows] + want[rows])
        args: list = [self.prefix, self.pid, int(self.ttl_s * 1000), len(rows)]
        ids = b.campaign_ids
        for i in rows.tolist():
            args += [ids[i], int(total[i]), int(committed[i]), int(want[i]),
                     int(self.world_budget[i]), int(self.world_active[i])]
        self._sending_since = now
        try:
            out = await self._sync(args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc, now)
            return False
        finally:
            self._sending_since = None
        r = np.asarray(out, dtype=np.int64).reshape(-1, 6)
        grant = r[:, 0]
        self.lease[rows] = grant
        self.floats[rows] = np.maximum(grant - (committed[rows] - total[rows]), 0)
        self.reported[rows] = total[rows]
        b.budget_micros[rows] = total[rows] + grant
        self.global_budget[rows], self.global_spent[rows] = r[:, 1], r[:, 2]
        self.global_leased[rows] = r[:, 3]
        b.active[rows] = r[:, 4]
        if len(self._sent) != len(total):
            self._sent = np.zeros((len(total), 3), np.int64)
        self._sent[rows] = np.stack([total[rows], committed[rows], want[rows]], axis=1)
        self.campaigns_synced += len(rows)
        self.valid_until = now + self.ttl_s - 2.0
        self.last_ok = now
        if not self.available:
            log.info("shared budgets: %s answers; bidding on leases (%s)", redacted(self.url),
                     self.pid)
        self.available = True
        self.syncs += 1
        await self.sync_frequency()
        return True

    def _failed(self, exc: BaseException, now: float) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.available:
            log.warning("shared budgets: %s does not answer (%s); bidding within the leases "
                        "held for %.0f s more", redacted(self.url), self.last_error,
                        max(self.valid_until - now, 0))
        self.available = False
        if now >= self.valid_until:
            b = self.books
            np.minimum(b.budget_micros, b.spent_micros + b.reserved_micros, out=b.budget_micros)

    def running_low(self) -> bool:
        """A float is three-quarters used while its campaign's budget has room left and a
        larger float could be granted: top up now rather than at the next sync."""
        b = self.books
        headroom = b.budget_micros - b.spent_micros - b.reserved_micros
        room = self.global_budget - self.global_spent - self.global_leased
        below_cap = self.floats < self._cap()  # a top-up can still grow these
        return bool(((headroom * 4 < self.floats) & (room > 0) & below_cap).any())

    def _cap(self) -> np.ndarray:
        return np.maximum(self.global_budget // 10, self.float_micros)

    async def run(self) -> None:
        """Sync every sync_s, or sooner (checked every 50 ms) when a lease runs low, until
        cancelled."""
        tick = min(self.sync_s, 0.05)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last >= self.sync_s or (self.available and self.running_low()):
                last = now
                await self.sync()

    async def close(self) -> None:
        """Give the floats back (the leases keep this process's open reservations)."""
        if await self.sync(drain=True):
            log.info("shared budgets: leases given back to %s", redacted(self.url))
        await self.client.aclose()

    # -- what the rest of the server reads and changes --------------------------------

    async def processes(self) -> list[tuple[str, int, int, float]]:
        """(process, leased, reported spend, seconds to expiry) for every process Redis
        knows, read from Redis (for Status; one pipelined read per campaign)."""
        ids = self.books.campaign_ids
        async with self.client.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(f"{self.prefix}c:{{{cid}}}")
            pipe.zrange(f"{self.prefix}procs", 0, -1, withscores=True)
            pipe.time()
            *hashes, procs, (sec, usec) = await pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        totals: dict[str, list[int]] = {}
        for h in hashes:
            for field, value in h.items():
                kind, _, pid = field.decode().partition(":")
                if kind in ("lease", "reported") and pid:
                    t = totals.setdefault(pid, [0, 0])
                    t[0 if kind == "lease" else 1] += int(value)
        expiry = {p.decode(): (score - now_ms) / 1000 for p, score in procs}
        return [(pid, t[0], t[1], expiry.get(pid, -1.0)) for pid, t in sorted(totals.items())]

    def reachable(self) -> bool:
        """The last sync succeeded and no sync call has waited on Redis for longer than
        STALL_S (a paused Redis shows here before the call in flight times out). A busy
        event loop that merely starts its next sync late is no sign of Redis away."""
        since = self._sending_since
        return self.available and (since is None or time.monotonic() - since < self.STALL_S)

    def reasons(self, reason: np.ndarray) -> None:
        """While Redis is away a budget refusal means the budget could not be reached."""
        if not self.reachable():
            reason[reason == pb.NO_BID_REASON_BUDGET_EXHAUSTED] = \
                pb.NO_BID_REASON_BUDGET_UNAVAILABLE

    def pacing_view(self) -> tuple[np.ndarray, np.ndarray]:
        """(budget, committed) for pacing: the global books plus this process's spend
        not yet reported and its open reservations."""
        b = self.books
        committed = self.global_spent + (b.spent_micros - self.reported) + b.reserved_micros
        return self.global_budget.copy(), committed

    async def update(self, row: int, budget_micros: int | None, active: bool | None) -> None:
        """A budget change or pause, for every replica (each sees it at its next sync)."""
        out = await self._update(args=[
            self.prefix, self.books.campaign_ids[row],
            "" if budget_micros is None else int(budget_micros),
            "" if active is None else int(active)])
        budget, is_active = int(out[0]), int(out[1])
        if budget >= 0:
            self.global_budget[row] = budget
        self.books.active[row] = is_active
        if not is_active:
            b = self.books
            b.budget_micros[row] = min(int(b.budget_micros[row]),
                                       int(b.spent_micros[row] + b.reserved_micros[row]))

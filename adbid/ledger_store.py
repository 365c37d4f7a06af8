"""The spend ledger's durable store: SQLite in WAL mode.

Every reservation, settlement, release and campaign change is a row written
in one transaction per flush, before the bid or the notice is acknowledged.
With synchronous=NORMAL (the default) a committed transaction survives the
process being killed (kill -9); synchronous=FULL also survives power loss, at
the cost of an fsync per commit.

The store is used from one thread only (the ledger's writer thread).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

OPEN, WON, LOST, EXPIRED, LATE_WON = 0, 1, 2, 3, 4
STATE_NAMES = {OPEN: "open", WON: "won", LOST: "lost", EXPIRED: "expired", LATE_WON: "late won"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservation (
    request_id TEXT PRIMARY KEY,         -- the bid's request id (unique forever)
    campaign_id TEXT NOT NULL,
    user_key INTEGER NOT NULL,           -- hash of the user id, for frequency release
    price_cpm_micros INTEGER NOT NULL,   -- the bid
    cost_micros INTEGER NOT NULL,        -- reserved: ceil(price / 1000)
    reserved_unix_ms INTEGER NOT NULL,
    expires_unix_ms INTEGER NOT NULL,
    state INTEGER NOT NULL,              -- 0 open, 1 won, 2 lost, 3 expired, 4 won after expiry
    clearing_cpm_micros INTEGER,         -- for won: the price paid
    settled_cost_micros INTEGER NOT NULL DEFAULT 0, -- for won: committed spend
    closed_unix_ms INTEGER
);
CREATE INDEX IF NOT EXISTS reservation_by_state ON reservation (state, campaign_id);
CREATE TABLE IF NOT EXISTS campaign (
    campaign_id TEXT PRIMARY KEY,
    budget_micros INTEGER NOT NULL,
    active INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS change_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unix_ms INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    change TEXT NOT NULL,                -- e.g. "budget_micros 500000000 -> 750000000"
    reason TEXT NOT NULL
);
"""


@dataclass
class Reserve:
    request_id: str
    campaign_id: str
    user_key: int
    price_cpm_micros: int
    cost_micros: int
    reserved_unix_ms: int
    expires_unix_ms: int


@dataclass
class Close:
    request_id: str
    state: int
    clearing_cpm_micros: int | None
    settled_cost_micros: int
    closed_unix_ms: int


@dataclass
class CampaignChange:
    campaign_id: str
    budget_micros: int
    active: bool
    change: str
    reason: str
    unix_ms: int


@dataclass
class Snapshot:
    """What the store holds, as the ledger needs it at start-up."""

    campaigns: dict[str, tuple[int, bool]]  # campaign id -> (budget, active)
    open: list[tuple]  # (request_id, campaign_id, user_key, price, cost, expires_ms)
    spent: dict[str, int]  # campaign id -> committed spend
    recent_closed: list[tuple[str, int]]  # (request_id, state), newest first


class LedgerStore:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"ledger synchronous mode must be NORMAL or FULL, got {synchronous}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.executescript(SCHEMA)

    def write(self, reserves: list[Reserve], closes: list[Close],
              changes: list[CampaignChange]) -> None:
        """One transaction; returns once committed."""
        if not (reserves or closes or changes):
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if reserves:
                db.executemany(
                    "INSERT INTO reservation (request_id, campaign_id, user_key, price_cpm_micros,"
                    " cost_micros, reserved_unix_ms, expires_unix_ms, state)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    [(r.request_id, r.campaign_id, r.user_key, r.price_cpm_micros, r.cost_micros,
                      r.reserved_unix_ms, r.expires_unix_ms) for r in reserves])
            if closes:
                db.executemany(
                    "UPDATE reservation SET state = ?, clearing_cpm_micros = ?,"
                    " settled_cost_micros = ?, closed_unix_ms = ? WHERE request_id = ?",
                    [(c.state, c.clearing_cpm_micros, c.settled_cost_micros, c.closed_unix_ms,
                      c.request_id) for c in closes])
            for ch in changes:
                db.execute(
                    "INSERT INTO campaign (campaign_id, budget_micros, active, updated_unix_ms)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (campaign_id) DO UPDATE SET"
                    " budget_micros = excluded.budget_micros, active = excluded.active,"
                    " updated_unix_ms = excluded.updated_unix_ms",
                    (ch.campaign_id, ch.budget_micros, int(ch.active), ch.unix_ms))
                db.execute("INSERT INTO change_log (unix_ms, campaign_id, change, reason)"
                           " VALUES (?, ?, ?, ?)", (ch.unix_ms, ch.campaign_id, ch.change,
                                                    ch.reason))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def load(self, recent_closed: int) -> Snapshot:
        db = self.db
        campaigns = {cid: (budget, bool(active)) for cid, budget, active in db.execute(
            "SELECT campaign_id, budget_micros, active FROM campaign")}
        open_ = db.execute(
            "SELECT request_id, campaign_id, user_key, price_cpm_micros, cost_micros,"
            " expires_unix_ms FROM reservation WHERE state = 0").fetchall()
        spent = dict(db.execute(
            "SELECT campaign_id, SUM(settled_cost_micros) FROM reservation"
            " WHERE state IN (1, 4) GROUP BY campaign_id"))
        closed = db.execute(
            "SELECT request_id, state FROM reservation WHERE state != 0"
            " ORDER BY closed_unix_ms DESC LIMIT ?", (recent_closed,)).fetchall()
        return Snapshot(campaigns, open_, spent, closed)

    def find(self, request_id: str) -> tuple | None:
        """(state, campaign_id, user_key, price, cost) of one reservation, or None."""
        return self.db.execute(
            "SELECT state, campaign_id, user_key, price_cpm_micros, cost_micros FROM reservation"
            " WHERE request_id = ?", (request_id,)).fetchone()

    def totals(self) -> dict[str, dict[str, int]]:
        """Per campaign: committed spend and open reservations, straight from the rows."""
        out: dict[str, dict[str, int]] = {}
        for cid, state, cost, settled in self.db.execute(
                "SELECT campaign_id, state, SUM(cost_micros), SUM(settled_cost_micros)"
                " FROM reservation GROUP BY campaign_id, state"):
            t = out.setdefault(cid, {"spent": 0, "reserved": 0})
            if state == OPEN:
                t["reserved"] += cost
            elif state in (WON, LATE_WON):
                t["spent"] += settled
        return out

    def close(self) -> None:
        self.db.close()


def now_ms() -> int:
    return int(time.time() * 1000)

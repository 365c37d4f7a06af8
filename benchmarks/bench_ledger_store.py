"""Durable ledger stores compared on the ledger's write pattern and on recovery.

Each flush is what one batch of 256 events writes: 256 reservations, plus 150
settlements or releases of earlier ones, with random 32-hex-digit request ids
as exchanges send them. Compared, on the same disk:

  log-write       adbid.money.journal.LedgerLog, sync="write" (survives kill -9)
  log-fsync       the same with fdatasync per commit (survives power loss; the default)
  sqlite-normal   SQLite, WAL, synchronous=NORMAL (survives kill -9), the store adbid
                  used first: table keyed by request id plus an index by state
  sqlite-full     the same with synchronous=FULL (fsync per commit)

Reported: microseconds per flush (median and range over repeats), per record,
and the time to rebuild the books from each store.

    python benchmarks/bench_ledger_store.py [--flushes 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, repeat, write

from adbid.money.journal import LedgerLog
from adbid.money.ledger import SpendLedger
from adbid.money.records import Close, Reserve
from adbid.world.campaigns import CampaignTable

RESERVES, CLOSES = 256, 150


def workload(flushes: int, seed: int = 0):
    """(reserves, closes) per flush."""
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(flushes * RESERVES)]
    out = []
    for f in range(flushes):
        reserves = [Reserve(ids[f * RESERVES + i], f"c{(f + i) % 300:04d}", i, 2_000_000, 2000,
                            1, 300_001) for i in range(RESERVES)]
        closes = [Close(ids[(f - 2) * RESERVES + i], 1 if i % 2 else 2, 1_500_000, 1500, 2,
                        f"c{(f - 2 + i) % 300:04d}", 2_000_000)
                  for i in range(CLOSES)] if f >= 2 else []
        out.append((reserves, closes))
    return out


class Sqlite:
    SCHEMA = """CREATE TABLE reservation (request_id TEXT PRIMARY KEY, campaign_id TEXT,
        user_key INTEGER, price INTEGER, cost INTEGER, at INTEGER, expires INTEGER,
        state INTEGER, clearing INTEGER, settled INTEGER DEFAULT 0, closed INTEGER);
        CREATE INDEX by_state ON reservation (state, campaign_id);"""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(self.SCHEMA)

    def write(self, reserves, closes) -> None:
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT INTO reservation (request_id, campaign_id, user_key, price, cost,"
                       " at, expires, state) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                       [(r.request_id, r.campaign_id, r.user_key, r.price_cpm_micros,
                         r.cost_micros, r.reserved_unix_ms, r.expires_unix_ms) for r in reserves])
        db.executemany("UPDATE reservation SET state = ?, clearing = ?, settled = ?, closed = ?"
                       " WHERE request_id = ?", [(c.state, c.clearing_cpm_micros,
                                                  c.settled_cost_micros, c.closed_unix_ms,
                                                  c.request_id) for c in closes])
        db.execute("COMMIT")

    def rebuild(self) -> None:
        self.db.execute("SELECT campaign_id, SUM(cost) FROM reservation WHERE state = 0"
                        " GROUP BY campaign_id").fetchall()
        self.db.execute("SELECT campaign_id, SUM(settled) FROM reservation WHERE state = 1"
                        " GROUP BY campaign_id").fetchall()
        self.db.execute("SELECT request_id, state FROM reservation WHERE state != 0").fetchall()


CAMPAIGNS = CampaignTable.from_records([{"campaign_id": f"c{i:04d}",
                                          "value_per_action_micros": 1,
                                          "budget_micros": 10**15} for i in range(300)])


def run(kind: str, batches) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as d:
        path = Path(d) / "store"
        if kind.startswith("log"):
            store = LedgerLog(path, "fsync" if kind == "log-fsync" else "write")
            store.open()
            t0 = time.perf_counter()
            for reserves, closes in batches:
                store.append(reserves + closes).result()  # one flush at a time: no grouping
            elapsed = time.perf_counter() - t0
            store.close()
            t1 = time.perf_counter()
            SpendLedger(CAMPAIGNS, LedgerLog(path, "write")).close()  # replay into the books
        else:
            store = Sqlite(path, "FULL" if kind == "sqlite-full" else "NORMAL")
            t0 = time.perf_counter()
            for reserves, closes in batches:
                store.write(reserves, closes)
            elapsed = time.perf_counter() - t0
            store.db.close()
            t1 = time.perf_counter()
            s2 = Sqlite.__new__(Sqlite)
            s2.db = sqlite3.connect(str(path))
            s2.rebuild()
        return elapsed, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flushes", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    records = a.flushes * RESERVES + max(0, a.flushes - 2) * CLOSES
    batches = workload(a.flushes)
    result = {"benchmark": "ledger store", "machine": machine(), "flushes": a.flushes,
              "records": records, "stores": {}}
    print(f"{a.flushes} flushes of {RESERVES} reservations + {CLOSES} settlements "
          f"({records:,} records), {a.repeats} repeats")
    for kind in ("log-write", "log-fsync", "sqlite-normal", "sqlite-full"):
        timings = [run(kind, batches) for _ in range(a.repeats)]
        it = iter(timings)
        write_s = repeat(lambda it=it: next(it)[0], a.repeats)
        recover = sorted(t[1] for t in timings)[len(timings) // 2]
        per_flush = {k: v / a.flushes * 1e6 for k, v in write_s.items() if k != "n"}
        result["stores"][kind] = {"us_per_flush": per_flush,
                                  "us_per_record": write_s["median"] / records * 1e6,
                                  "recover_s": recover}
        print(f"  {kind:14s} {per_flush['median']:8.0f} us/flush (range {per_flush['min']:.0f}-"
              f"{per_flush['max']:.0f}), {write_s['median'] / records * 1e6:5.2f} us/record, "
              f"rebuild {recover * 1e3:6.0f} ms")
    print(f"-> {write('ledger_store', result)}")


if __name__ == "__main__":
    main()

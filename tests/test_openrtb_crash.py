"""kill -9 a real server while OpenRTB bids and their notices are in flight: every bid and
billing notice it acknowledged over HTTP is in the ledger, and no billing counts twice."""

from __future__ import annotations

import http.client
import json
import random
import re
import signal
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from test_openrtb import fill, start_server, stop_server

from adbid.money.journal import LedgerLog
from adbid.money.records import SETTLED, Close, Reserve

KILLS = 3


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/openrtb2/bid", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(url: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def rid_of(url: str) -> str:
    query = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))
    return query["r"].replace("%2F", "/")


def test_sigkill_with_openrtb_bids_and_notices_in_flight(tiny_world_dir, tmp_path):
    ledger = tmp_path / "ledger"
    rng = random.Random(7)
    acked_bids: set[str] = set()
    billed: dict[str, int] = {}  # rid -> clearing CPM micros, acknowledged
    pending: list[tuple[str, str, int]] = []  # (burl or lurl, rid, clearing micros)
    n = [0]

    def load(port: int, stop: threading.Event, bid: bool) -> None:
        while not stop.is_set() and n[0] < 100_000 and (bid or pending):
            n[0] += 1
            if not bid:
                deliver(port, stop)
                continue
            request = {"id": f"k{n[0]}", "tmax": 500, "at": 1,
                       "imp": [{"id": str(i), "banner": {"w": 300, "h": 250}, "bidfloor": 0.01}
                               for i in range(2)],
                       "site": {"domain": "news.example", "keywords": "football soccer"}}
            try:
                status, body = post(port, json.dumps(request).encode())
            except (OSError, http.client.HTTPException):  # killed mid-answer
                return
            if status == 200:
                for b in (b for sb in json.loads(body)["seatbid"] for b in sb["bid"]):
                    acked_bids.add(rid_of(b["burl"]))
                    if rng.random() < 0.5:
                        clearing = round(b["price"] * rng.uniform(0.3, 1.0), 6)
                        pending.append((fill(b["burl"], clearing), rid_of(b["burl"]),
                                        round(clearing * 1e6)))  # 6 decimals: exact
                    elif rng.random() < 0.5:
                        pending.append((fill(b["lurl"]), rid_of(b["lurl"]), 0))
            if not deliver(port, stop):
                return

    def deliver(port: int, stop: threading.Event) -> bool:
        """Deliver the pending notices in order; False when the server went away (each is
        delivered again to the next server, as an exchange retries)."""
        while pending and not stop.is_set():
            url, rid, clearing = pending[0]
            url = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", url)
            try:
                status = get(url)
            except (OSError, http.client.HTTPException):
                return False
            assert status == 204, (status, url)
            if "/bill?" in url:
                billed[rid] = clearing
            pending.pop(0)
        return True

    for cycle in range(KILLS + 1):
        s = start_server(tiny_world_dir, ledger, tmp_path / f"serve{cycle}.log")
        stop = threading.Event()
        client = threading.Thread(target=load, args=(s.http_port, stop, cycle < KILLS))
        client.start()
        if cycle < KILLS:
            time.sleep(rng.uniform(1.0, 2.5))
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait()
            stop.set()
            client.join(30)
        else:  # the last server delivers what is left, then stops cleanly
            deadline = time.monotonic() + 20
            while pending and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()
            client.join(30)
            stop_server(s)
    assert not pending, f"{len(pending)} notices never acknowledged"
    assert len(acked_bids) > 100 and len(billed) > 20

    reserved, won = set(), Counter()
    settled: dict[str, int] = {}
    for record in LedgerLog(ledger).replay():
        if isinstance(record, Reserve):
            reserved.add(record.request_id)
        elif isinstance(record, Close) and record.state in SETTLED:
            won[record.request_id] += 1
            settled[record.request_id] = record.settled_cost_micros
    assert acked_bids <= reserved, "an acknowledged bid is missing from the ledger"
    assert set(billed) <= set(won), "an acknowledged billing notice is missing"
    assert max(won.values()) == 1, "a billing counted twice"
    for rid, clearing in billed.items():
        assert settled[rid] == -(-clearing // 1000)

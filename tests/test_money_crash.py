"""kill -9 a real server under load, again and again: nothing acknowledged is lost or doubled."""

from __future__ import annotations

import random
import signal
import threading
import time

import grpc
import numpy as np

from adbid.money import journal as ledger_log
from adbid.money.journal import LedgerLog
from adbid.money.records import LATE_WON, OPEN, WON, Close, Reserve
from adbid.money.units import impression_cost_micros
from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc
from adbid.world.artifacts import World
from adbid.world.demo_traffic import make_events
from tests.serveproc import start_server

KILLS = 10


def test_sigkill_under_load_loses_and_doubles_nothing(tiny_world_dir, tmp_path):
    ledger = tmp_path / "crash"
    rng = random.Random(2026)
    np_rng = np.random.default_rng(2026)
    acked_bids: dict[str, str] = {}  # request id -> campaign, from answered Bid calls
    unanswered_batches: list[set[str]] = []  # request ids of Bid calls that got no answer
    wanted: dict[str, pb.Outcome] = {}  # notices to deliver, until acknowledged
    acked: dict[str, pb.Outcome] = {}  # notices the server acknowledged
    settled_cost: dict[str, int] = {}  # request id -> cost, for win notices acknowledged
    redelivered = [0]

    def load(port: int, stop: threading.Event, cycle: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            b = 0
            while not stop.is_set() and b < 500:
                events = make_events(16, np_rng, n_users=2_000, id_prefix=f"k{cycle}b{b}-")
                b += 1
                try:
                    resp = stub.Bid(pb.BidRequest(events=events), timeout=5)
                except grpc.RpcError:
                    unanswered_batches.append({e.request_id for e in events})
                    return
                for d in resp.decisions:
                    if d.bid:
                        acked_bids[d.request_id] = d.campaign_id
                        if rng.random() < 0.6:
                            win = rng.random() < 0.6
                            wanted[d.request_id] = pb.Outcome(
                                request_id=d.request_id,
                                type=pb.OUTCOME_TYPE_WIN if win else pb.OUTCOME_TYPE_LOSS,
                                clearing_price_cpm_micros=rng.randint(1, d.price_cpm_micros)
                                if win else 0)
                if not deliver(stub):
                    return

    def deliver(stub) -> bool:
        todo = [n for rid, n in wanted.items() if rid not in acked]
        rng.shuffle(todo)
        for i in range(0, len(todo), 20):
            chunk = todo[i:i + 20]
            try:
                results = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=chunk),
                                              timeout=5).results
            except grpc.RpcError:
                redelivered[0] += 1
                return False  # not acknowledged: delivered again after the restart
            for n, r in zip(chunk, results):
                assert r.accepted, r.error
                acked[n.request_id] = n
                # A duplicate here is a notice that was committed just before a kill, so
                # its acknowledgement was lost; either way it must be settled exactly once,
                # which the totals below check.
                if n.type == pb.OUTCOME_TYPE_WIN:
                    settled_cost[n.request_id] = impression_cost_micros(
                        n.clearing_price_cpm_micros)
        return True

    for cycle in range(KILLS):
        proc, port, _ = start_server(tiny_world_dir, ledger, tmp_path / f"serve{cycle}.log")
        stop = threading.Event()
        t = threading.Thread(target=load, args=(port, stop, cycle))
        t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        t.join(30)

    # Restart once more and deliver every notice that was never acknowledged.
    proc, port, _ = start_server(tiny_world_dir, ledger, tmp_path / "final.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert deliver(bidder_pb2_grpc.BidderStub(ch))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert len(acked) == len(wanted) > 100 and len(settled_cost) > 30

    print(f"\ncrash test: {KILLS} kills, {len(acked_bids)} bids answered, "
          f"{len(unanswered_batches)} Bid calls cut off by a kill, {len(acked)} notices "
          f"acknowledged ({len(settled_cost)} wins), {redelivered[0]} notice deliveries "
          f"cut off and repeated")
    assert unanswered_batches or redelivered[0], "the kills never landed under load"
    rows: dict[str, tuple[str, int, int]] = {}  # request id -> (campaign, state, settled cost)
    for rec in LedgerLog(ledger).replay():
        if isinstance(rec, Reserve):
            assert rec.request_id not in rows, "a reservation written twice"
            rows[rec.request_id] = (rec.campaign_id, OPEN, 0)
        elif isinstance(rec, Close):
            cid, _, cost = rows[rec.request_id]
            rows[rec.request_id] = (cid, rec.state, cost + rec.settled_cost_micros)
    # Every acknowledged bid is in the ledger; the only other rows are bids whose answer was lost.
    assert set(acked_bids) <= set(rows)
    lost_answers = set().union(*unanswered_batches) if unanswered_batches else set()
    assert set(rows) - set(acked_bids) <= lost_answers
    # Every acknowledged notice is there with its effect, and each win counted once.
    for rid, n in acked.items():
        cid, state, cost = rows[rid]
        if n.type == pb.OUTCOME_TYPE_WIN:
            assert state in (WON, LATE_WON) and cost == settled_cost[rid], rid
        else:
            assert state != OPEN, rid
    spent_by_campaign: dict[str, int] = {}
    for rid, cost in settled_cost.items():
        spent_by_campaign[acked_bids[rid]] = spent_by_campaign.get(acked_bids[rid], 0) + cost
    budgets = dict(zip(World.load(tiny_world_dir).campaigns.ids,
                       World.load(tiny_world_dir).campaigns.budget_micros.tolist()))
    for cid, t in ledger_log.totals(ledger).items():
        assert t["spent"] == spent_by_campaign.get(cid, 0), cid
        assert t["spent"] + t["reserved"] <= budgets[cid], cid

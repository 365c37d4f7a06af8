"""Many concurrent clients against small budgets: the books balance to the micro."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import grpc
import numpy as np

from adbid.money import journal as ledger_log
from adbid.money.units import impression_cost_micros
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events

CLIENTS = 8
BATCHES_PER_CLIENT = 25
BATCH = 32


def bid_with_retries(stub, request: pb.BidRequest, tries: int = 50) -> pb.BidResponse:
    """What a client of a loaded server does: RESOURCE_EXHAUSTED (admission) is retried
    after a short backoff; anything else fails."""
    for attempt in range(tries):
        try:
            return stub.Bid(request, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == tries - 1:
                raise
            time.sleep(0.01 * (1 + attempt % 5))
    raise AssertionError("unreachable")


def test_concurrent_bids_and_messy_notices_never_overspend_and_balance(server_factory, tmp_path):
    server = server_factory(ledger=tmp_path / "money")
    with grpc.insecure_channel(server.target) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        campaigns = admin.Status(admin_pb2.StatusRequest(), timeout=5).campaigns
        # Small budgets (about 20-60 impressions each) so that they run out under load.
        for i, c in enumerate(campaigns):
            admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(
                campaign_id=c.campaign_id, budget_micros=40_000 + 10_000 * (i % 5),
                reason="concurrency test"), timeout=5)

    lock = threading.Lock()
    acked_win_cost: dict[str, int] = defaultdict(int)
    bids_made = [0]
    problems: list[str] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        np_rng = np.random.default_rng(seed)
        pending: list[pb.Outcome] = []  # notices held back, sent later in another order
        campaign_of: dict[str, str] = {}
        with grpc.insecure_channel(server.target) as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            for b in range(BATCHES_PER_CLIENT):
                events = make_events(BATCH, np_rng, n_users=2_000, id_prefix=f"c{seed}b{b}-")
                resp = bid_with_retries(stub, pb.BidRequest(batch_id=f"{seed}-{b}",
                                                            events=events))
                for d in resp.decisions:
                    if not d.bid:
                        continue
                    campaign_of[d.request_id] = d.campaign_id
                    with lock:
                        bids_made[0] += 1
                    fate = rng.random()
                    if fate < 0.45:
                        clearing = rng.randint(1, d.price_cpm_micros)
                        n = pb.Outcome(request_id=d.request_id, type=pb.OUTCOME_TYPE_WIN,
                                       clearing_price_cpm_micros=clearing)
                        pending.append(n)
                        if rng.random() < 0.3:  # a duplicate, and a billing notice after it
                            pending.append(n)
                            pending.append(pb.Outcome(request_id=d.request_id,
                                                      type=pb.OUTCOME_TYPE_BILLING,
                                                      clearing_price_cpm_micros=clearing))
                    elif fate < 0.8:
                        pending.append(pb.Outcome(request_id=d.request_id,
                                                  type=pb.OUTCOME_TYPE_LOSS))
                    # else: no notice at all; the reservation stays open
                rng.shuffle(pending)
                send, pending = pending[:len(pending) // 2], pending[len(pending) // 2:]
                if b == BATCHES_PER_CLIENT - 1:
                    send, pending = send + pending, []
                if send:
                    results = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=send),
                                                  timeout=10).results
                    for n, r in zip(send, results):
                        if not r.accepted:
                            problems.append(f"notice refused: {r.error}")
                        elif n.type != pb.OUTCOME_TYPE_LOSS and not r.duplicate:  # settled
                            with lock:
                                acked_win_cost[campaign_of[n.request_id]] += \
                                    impression_cost_micros(n.clearing_price_cpm_micros)

    def checker() -> None:
        with grpc.insecure_channel(server.target) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            while not stop.is_set():
                for c in admin.Status(admin_pb2.StatusRequest(), timeout=5).campaigns:
                    if c.spent_micros + c.reserved_micros > c.budget_micros:
                        problems.append(f"{c.campaign_id} over budget mid-run")
                time.sleep(0.05)

    def guarded(seed: int) -> None:
        try:
            client(seed)
        except Exception as exc:  # a dead client would silently shrink the test
            problems.append(f"client {seed}: {exc!r}")

    threads = [threading.Thread(target=guarded, args=(s,)) for s in range(CLIENTS)]
    watch = threading.Thread(target=checker)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    watch.join(10)
    assert not problems, problems[:5]
    assert bids_made[0] > 200

    with grpc.insecure_channel(server.target) as ch:
        final = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)
    exhausted = 0
    for c in final.campaigns:
        assert c.spent_micros + c.reserved_micros <= c.budget_micros, c
        assert c.spent_micros == acked_win_cost.get(c.campaign_id, 0), c.campaign_id
        exhausted += c.budget_micros - c.spent_micros - c.reserved_micros < 5_000
    assert exhausted >= 3, "some budgets should have run out under this load"
    # The durable log says the same, to the micro.
    totals = ledger_log.totals(tmp_path / "money")
    for c in final.campaigns:
        t = totals.get(c.campaign_id, {"spent": 0, "reserved": 0})
        assert (t["spent"], t["reserved"]) == (c.spent_micros, c.reserved_micros)

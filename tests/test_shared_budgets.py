"""Replicas that share budgets through a real redis-server: leases, skewed traffic, faults."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from adbid.money.units import impression_cost_micros
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events
from tests.redisproc import RedisProc
from tests.serveproc import start_server

BUDGET = 400_000  # micros per campaign: a few hundred impressions


@pytest.fixture
def redis_server(tmp_path):
    try:
        r = RedisProc(tmp_path / "redis").start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield r
    r.stop()


def seed_budgets(r: RedisProc, campaign_ids, budget: int) -> None:
    """Budgets as an operator sets them before the replicas start (the world's otherwise)."""
    c = r.client()
    for cid in campaign_ids:
        c.hset(f"adbid:c:{{{cid}}}", mapping={"budget": budget, "active": 1})


class Exchange:
    """Plays an exchange: sends batches to one replica, every bid wins at its price, and
    the win notice goes back to the replica that bid."""

    def __init__(self, servers, seed: int = 1) -> None:
        self.channels = [grpc.insecure_channel(s.target) for s in servers]
        self.stubs = [bidder_pb2_grpc.BidderStub(ch) for ch in self.channels]
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.max_cost: dict[str, int] = {}
        self.reasons: dict[int, int] = {}

    def round(self, i: int, events: int = 16) -> int:
        stub = self.stubs[i]
        batch = make_events(events, self.rng, n_users=2_000, id_prefix=f"x{self.n}-")
        self.n += 1
        resp = stub.Bid(pb.BidRequest(events=batch), timeout=10)
        wins = []
        for d in resp.decisions:
            self.reasons[d.no_bid_reason] = self.reasons.get(d.no_bid_reason, 0) + 1
            if d.bid:
                cost = impression_cost_micros(d.price_cpm_micros)
                self.max_cost[d.campaign_id] = max(self.max_cost.get(d.campaign_id, 0), cost)
                wins.append(pb.Outcome(request_id=d.request_id, type=pb.OUTCOME_TYPE_WIN,
                                       clearing_price_cpm_micros=d.price_cpm_micros))
        if wins:
            results = stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=wins),
                                          timeout=10).results
            assert all(r.accepted for r in results)
        return len(wins)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def books(servers) -> tuple[np.ndarray, np.ndarray]:
    """Spent and spent + reserved per campaign, summed over the replicas."""
    async def snap(s):
        led = s.server.ledger
        return led.spent_micros.copy(), (led.spent_micros + led.reserved_micros).copy()

    got = [s.call(snap(s)) for s in servers]
    return sum(g[0] for g in got), sum(g[1] for g in got)


def replicas(server_factory, url: str, n: int, **kw):
    kw.setdefault("redis_sync_ms", 100.0)
    kw.setdefault("redis_float_micros", 5_000)
    return [server_factory(redis=url, **kw) for _ in range(n)]


def skewed(servers, ids, rounds: int = 4_000, seed: int = 3, snapshot_at: int = 300):
    """90% of the rounds to replica 0, every bid won and reported; until 200 rounds in a
    row win nothing. Returns the exchange, the most committed past a budget at any poll,
    and the final spend per campaign."""
    ex = Exchange(servers)
    pick = random.Random(seed)
    over = quiet = 0
    deadline = time.monotonic() + 90
    try:
        for k in range(rounds):
            i = 0 if pick.random() < 0.9 else pick.choice((1, 2))
            won = ex.round(i)
            if k % 10 == 0:
                over = max(over, int((books(servers)[1] - BUDGET).max()))
            if k + 1 == snapshot_at:
                early = books(servers)[0]
            quiet = quiet + 1 if won == 0 else 0
            if quiet > 200 or time.monotonic() > deadline:
                break
        time.sleep(0.5)  # the last syncs
        spent, committed = books(servers)
    finally:
        ex.close()
    over = max(over, int((committed - BUDGET).max()))
    return ex, over, spent, early


def test_three_replicas_with_skewed_traffic_spend_one_budget_and_never_overspend(
        redis_server, server_factory, tiny_world):
    """90% of the traffic to one replica: together they spend each budget that binds
    (>= 99%, or to within the cost of one impression) and at no poll have they committed
    more than it; fixed 1/3 slices on the same traffic leave money in the quiet ones."""
    ids = tiny_world.campaigns.ids
    seed_budgets(redis_server, ids, BUDGET)
    servers = replicas(server_factory, redis_server.url, 3)
    ex, over, spent, early = skewed(servers, ids)
    assert over <= 0, f"committed {over} micros past a budget"
    left = BUDGET - spent
    allowed = np.array([max(BUDGET // 100, ex.max_cost.get(c, 0)) for c in ids])
    # Budgets that bound: traffic took them past 80% (the rest ran out of demand: their
    # pacing plan, frequency caps). Leases that stranded money would stop these short; the
    # even-paced ones may stop short anyway: this far ahead of a day's plan, pacing holds
    # them back by design.
    exhausted = [c for i, c in enumerate(ids) if spent[i] > 0.8 * BUDGET]
    assert len(exhausted) >= 5
    modes = tiny_world.campaigns.pacing_mode
    stranded = {c: int(left[i]) for i, c in enumerate(ids)
                if c in exhausted and modes[i] != "even" and left[i] > allowed[i]}
    leases = [s.server.ledger.shared.lease.copy() for s in servers]
    assert not stranded, (f"money left unspent in budgets with traffic: {stranded}; leases "
                          f"{[{c: int(lz[ids.index(c)]) for c in stranded} for lz in leases]}"
                          f", reasons {ex.reasons}")
    # The global books in Redis agree with the replicas' ledgers.
    r = redis_server.client()
    for i, c in enumerate(ids):
        assert int(r.hget(f"adbid:c:{{{c}}}", "spent") or 0) == spent[i]
    # The same first 300 rounds on fixed slices (--workers 3 without Redis, the budgets set
    # to BUDGET): replica 0 runs out of its third while the others keep theirs.
    sliced = [server_factory(workers=3, worker_index=i, openrtb_port=0) for i in range(3)]
    for srv in sliced:
        srv.call(_set_budgets(srv, BUDGET))
    _, over_sliced, _, early_sliced = skewed(sliced, ids, rounds=300)
    assert over_sliced <= 0
    shared_total = sum(int(early[ids.index(c)]) for c in exhausted)
    sliced_total = sum(int(early_sliced[ids.index(c)]) for c in exhausted)
    assert sliced_total < 0.85 * shared_total, (sliced_total, shared_total)  # 79% seen


async def _set_budgets(srv, budget: int) -> None:
    led = srv.server.ledger
    for cid in led.campaign_ids:
        led.update_campaign(cid, budget, None, "test")
    await led.flush()


def test_one_replica_cannot_outspend_a_budget_another_also_draws_on(
        redis_server, server_factory, tiny_world):
    """Two replicas each alone could spend the whole budget; together they spend it once."""
    ids = tiny_world.campaigns.ids
    seed_budgets(redis_server, ids, 60_000)
    servers = replicas(server_factory, redis_server.url, 2)
    ex = Exchange(servers, seed=5)
    try:
        for k in range(600):
            ex.round(k % 2)
        time.sleep(0.4)
        spent, committed = books(servers)
    finally:
        ex.close()
    assert (committed <= 60_000).all() and spent.sum() > 0
    assert ex.reasons.get(pb.NO_BID_REASON_BUDGET_EXHAUSTED, 0) > 0


def status(server) -> admin_pb2.StatusResponse:
    with grpc.insecure_channel(server.target) as ch:
        return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10)


def test_a_budget_change_or_pause_on_one_replica_reaches_the_others(
        redis_server, server_factory, tiny_world):
    servers = replicas(server_factory, redis_server.url, 2)
    cid = tiny_world.campaigns.ids[0]
    with grpc.insecure_channel(servers[0].target) as ch:
        admin_pb2_grpc.AdminStub(ch).UpdateCampaign(admin_pb2.UpdateCampaignRequest(
            campaign_id=cid, budget_micros=123_456, active=False, reason="test"), timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = {c.campaign_id: c for c in status(servers[1]).campaigns}[cid]
        if st.budget_micros == 123_456 and not st.active:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"replica 2 still sees {st}")
    s = status(servers[1])
    assert s.shared_available and s.shared_store == redis_server.url and s.shared_syncs > 0
    assert s.shared_process != status(servers[0]).shared_process
    # Every process, as Redis has it: both, with their leases (the floats) and ttl.
    procs = {p.process: p for p in s.shared_processes}
    assert set(procs) == {s.shared_process, status(servers[0]).shared_process}
    assert all(p.leased_micros > 0 and 0 < p.expires_in_s <= 30 for p in procs.values())


@pytest.mark.parametrize("fault", ["kill", "pause", "slow", "wiped"])
def test_redis_away_keeps_serving_within_leases_then_recovers_by_itself(
        redis_server, server_factory, tiny_world, fault):
    """Redis killed (then restarted from its append-only file), paused (SIGSTOP, then
    SIGCONT), slow (busy for 4 s, past the client's 1 s timeout) or killed and restarted
    empty (its files lost; the operator sets the budgets again): every call is still
    answered, bids stay within the leases held (nothing overspent), refusals say
    BUDGET_UNAVAILABLE, bidding resumes on its own, and Redis's spend is again exactly the
    replicas' ledgers' (each reports its running total)."""
    ids = tiny_world.campaigns.ids
    seed_budgets(redis_server, ids, BUDGET)
    servers = replicas(server_factory, redis_server.url, 2)
    ex = Exchange(servers, seed=11)
    try:
        for k in range(60):
            ex.round(k % 2)
        busy = None
        if fault in ("kill", "wiped"):
            redis_server.kill()
        elif fault == "pause":
            redis_server.pause()
        else:
            busy = redis_server.slow(4.0)
        ex.reasons.clear()
        until = time.monotonic() + 2.5
        for k in range(3_000):  # answered throughout, leases used up, then refusals
            ex.round(k % 2)
            if k % 10 == 0:
                assert (books(servers)[1] <= BUDGET).all()
            if time.monotonic() > until:
                break
        assert ex.reasons.get(pb.NO_BID_REASON_BUDGET_UNAVAILABLE, 0) > 0, ex.reasons
        assert not status(servers[0]).shared_available
        with grpc.insecure_channel(servers[0].target) as ch:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
            h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert h.status == health_pb2.HealthCheckResponse.SERVING
        if fault == "kill":
            redis_server.start()
        elif fault == "wiped":
            for f in redis_server.dir.rglob("*"):
                if f.is_file() and f.name != "redis.log":
                    f.unlink()
            redis_server.start()
            seed_budgets(redis_server, ids, BUDGET)
        elif fault == "pause":
            redis_server.resume()
        else:
            busy.join(10)
        deadline = time.monotonic() + 15
        while not all(status(s).shared_available for s in servers):
            assert time.monotonic() < deadline, "the replicas did not reconnect"
            time.sleep(0.1)
        ex.reasons.clear()
        won = sum(ex.round(k % 2) for k in range(40))
        assert won > 0 and ex.reasons.get(pb.NO_BID_REASON_BUDGET_UNAVAILABLE, 0) == 0
        time.sleep(0.5)
        spent, committed = books(servers)
    finally:
        ex.close()
    assert (committed <= BUDGET).all()
    r = redis_server.client()  # the books reconciled with the ledgers after the outage
    for i, c in enumerate(ids):
        assert int(r.hget(f"adbid:c:{{{c}}}", "spent") or 0) == spent[i]


def start_replica(world, ledger, url: str, log, *extra: str
                  ) -> tuple[subprocess.Popen, int, int]:
    """`adbid serve --redis` as its own process; returns it, its gRPC and Admin ports."""
    return start_server(world, ledger, log, "--redis", url, "--redis-sync-ms", "100",
                        "--redis-float-micros", "5000", *extra)


def test_sigkill_of_a_replica_under_load_loses_and_doubles_nothing_in_the_global_books(
        redis_server, server_factory, tiny_world, tiny_world_dir, tmp_path):
    """A replica killed with SIGKILL five times under load and restarted on its ledger:
    afterwards Redis's spend per campaign is exactly the replicas' ledgers' spend, and no
    budget was overspent."""
    ids = tiny_world.campaigns.ids
    seed_budgets(redis_server, ids, 2_000_000)
    stable = replicas(server_factory, redis_server.url, 1)[0]
    ledger = tmp_path / "killed"
    rng = random.Random(9)
    pending: list[pb.Outcome] = []  # win notices for the killed replica, until acknowledged
    cut = [0]

    def load(port: int, stop: threading.Event, cycle: int) -> None:
        ex = Exchange([stable], seed=100 + cycle)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            for b in range(400):
                if stop.is_set():
                    break
                ex.round(0)
                events = make_events(16, ex.rng, n_users=2_000, id_prefix=f"k{cycle}-{b}-")
                try:
                    resp = stub.Bid(pb.BidRequest(events=events), timeout=5)
                    pending.extend(pb.Outcome(request_id=d.request_id,
                                              type=pb.OUTCOME_TYPE_WIN,
                                              clearing_price_cpm_micros=d.price_cpm_micros)
                                   for d in resp.decisions if d.bid)
                    deliver(stub)
                except grpc.RpcError:
                    cut[0] += 1
                    break
        ex.close()

    def deliver(stub) -> None:
        while pending:
            chunk = pending[:20]
            stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=chunk), timeout=5)
            del pending[:len(chunk)]  # acknowledged (a duplicate after a kill is refused)

    for cycle in range(5):
        proc, port, _ = start_replica(tiny_world_dir, ledger, redis_server.url,
                                      tmp_path / f"r{cycle}.log")
        stop = threading.Event()
        t = threading.Thread(target=load, args=(port, stop, cycle))
        t.start()
        time.sleep(rng.uniform(0.5, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        t.join(60)
    proc, port, admin_port = start_replica(tiny_world_dir, ledger, redis_server.url,
                                           tmp_path / "final.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            deliver(bidder_pb2_grpc.BidderStub(ch))
        time.sleep(0.5)
        with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
            killed = {c.campaign_id: c.spent_micros for c in admin_pb2_grpc.AdminStub(ch)
                      .Status(admin_pb2.StatusRequest(), timeout=10).campaigns}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert cut[0] > 0, "the kills never landed under load"
    spent, _ = books([stable])
    time.sleep(0.3)
    r = redis_server.client()
    total = 0
    for i, c in enumerate(ids):
        in_redis = int(r.hget(f"adbid:c:{{{c}}}", "spent") or 0)
        assert in_redis == spent[i] + killed[c], c
        assert in_redis <= 2_000_000
        total += in_redis
    assert total > 0 and sum(killed.values()) > 0


def test_a_frequency_cap_holds_across_replica_processes_within_the_stated_bound(
        redis_server, tiny_world, tiny_world_dir, tmp_path):
    """One user's impressions, one at a time, alternating between two replicas, each its own
    process (each win reported): per capped campaign at most cap + (N - 1), where without
    shared counts each replica would allow the whole cap (2 x cap). Separate processes, as
    in production: a user's key must not depend on anything one process picks for itself."""
    procs = [start_replica(tiny_world_dir, tmp_path / f"r{i}", redis_server.url,
                           tmp_path / f"r{i}.log") for i in range(2)]
    try:
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _, port, _ in procs]
        try:
            shown = alternate_one_user([bidder_pb2_grpc.BidderStub(ch) for ch in channels])
        finally:
            for ch in channels:
                ch.close()
    finally:
        for proc, _, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in procs:
            assert proc.wait(30) == 0
    caps = dict(zip(tiny_world.campaigns.ids, tiny_world.campaigns.freq_cap.tolist()))
    capped = {c: n for c, n in shown.items() if caps[c] > 0}
    assert capped, f"no capped campaign bid for the user: {shown}"
    over = {c: (n, caps[c]) for c, n in capped.items() if n > caps[c] + 1}
    assert not over, f"shown, cap: {over}"
    assert any(n >= caps[c] for c, n in capped.items())  # the caps were reached


def alternate_one_user(stubs) -> dict[str, int]:
    """120 single-event auctions for one user, in turn to each stub, every bid won and
    reported, a sync apart; impressions shown per campaign."""
    rng = np.random.default_rng(4)
    shown: dict[str, int] = {}
    for k in range(120):
        stub = stubs[k % 2]
        (e,) = make_events(1, rng, n_users=2_000, id_prefix=f"f{k}-")
        e.user_id = "u0000042"
        d = stub.Bid(pb.BidRequest(events=[e]), timeout=10).decisions[0]
        if d.bid:
            shown[d.campaign_id] = shown.get(d.campaign_id, 0) + 1
            stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=[pb.Outcome(
                request_id=d.request_id, type=pb.OUTCOME_TYPE_WIN,
                clearing_price_cpm_micros=d.price_cpm_micros)]), timeout=10)
        time.sleep(0.12)  # past a sync (100 ms)
    return shown


def test_the_sync_script_books_spend_beyond_a_lease_and_large_budgets_exactly(redis_server):
    """Spend reported with no lease left (a late win after the lease went back) and budgets
    past 1e14 micros: Lua must hand Redis exact integers ("-0", "1e+14" are refused)."""
    from adbid.money.redis_scripts import SYNC

    sync = redis_server.client().register_script(SYNC)
    big = 250_000_000_000_000  # $250M in micros
    grant = sync(args=["adbid:", "p1", 30_000, 1, "c1", 0, 0, 0, big, 1])
    assert grant[:2] == [0, big]
    out = sync(args=["adbid:", "p1", 30_000, 1, "c1", 7_000, 7_000, 5 * 10**14, big, 1])
    assert out[0] == big - 7_000 and out[2] == 7_000 and out[3] == big - 7_000
    repeat = sync(args=["adbid:", "p1", 30_000, 1, "c1", 7_000, 7_000, 0, big, 1])
    assert repeat[2] == 7_000 and repeat[3] == 0  # the same total again counts nothing


def test_a_killed_replicas_lease_returns_after_its_ttl_and_a_quiet_ones_float_sooner(
        redis_server, server_factory, tiny_world, tiny_world_dir, tmp_path):
    """SIGKILL: after --redis-lease-ttl-s its lease goes back to the pool but for what
    covered its open reservations. A replica with no traffic hands its floats back once
    its campaigns are idle (IDLE_S, shortened here)."""
    ids = tiny_world.campaigns.ids
    seed_budgets(redis_server, ids, BUDGET)
    live, quiet = replicas(server_factory, redis_server.url, 2)
    proc, port, admin_port = start_replica(tiny_world_dir, tmp_path / "k", redis_server.url,
                                           tmp_path / "k.log", "--redis-lease-ttl-s", "5")
    with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
        pid = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(),
                                                  timeout=10).shared_process
    r = redis_server.client()

    def lease_of(who: str) -> int:
        return sum(int(r.hget(f"adbid:c:{{{c}}}", f"lease:{who}") or 0) for c in ids)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # it bids (reservations open)
        stub = bidder_pb2_grpc.BidderStub(ch)
        rng = np.random.default_rng(8)
        for b in range(20):
            stub.Bid(pb.BidRequest(events=make_events(16, rng, n_users=2_000,
                                                      id_prefix=f"q{b}-")), timeout=10)
    time.sleep(0.3)
    before = lease_of(pid)
    held = sum(int(r.hget(f"adbid:c:{{{c}}}", f"held:{pid}") or 0) for c in ids)
    assert before > held > 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert quiet.server.ledger.shared.lease.sum() > 0  # floats, though it saw no traffic
    quiet.server.ledger.shared.IDLE_S = 1.0  # counted from its start: idle already
    deadline = time.monotonic() + 20
    while lease_of(pid) != held:  # reaped by the live replicas' syncs after 5 s
        assert time.monotonic() < deadline, (lease_of(pid), held)
        time.sleep(0.2)
    # The quiet replica's floats went back; it keeps no lease without reservations.
    shared = quiet.server.ledger.shared
    assert (shared.lease[quiet.server.ledger.reserved_micros == 0] == 0).all()
    leased = sum(int(r.hget(f"adbid:c:{{{c}}}", "leased") or 0) for c in ids)
    assert leased == sum(lease_of(p) for p in (pid, live.server.ledger.shared.pid,
                                                shared.pid))


def test_pacing_follows_the_global_spend_on_a_replica_without_traffic(
        redis_server, server_factory, tiny_world):
    """Spend far ahead of the even plan, all on replica 0: replica 1, which saw no traffic,
    throttles the same "even" campaigns, since it paces on the global books."""
    ids = tiny_world.campaigns.ids
    even = [i for i, m in enumerate(tiny_world.campaigns.pacing_mode) if m == "even"]
    assert even
    seed_budgets(redis_server, ids, BUDGET)
    busy, idle = replicas(server_factory, redis_server.url, 2)
    time.sleep(1.5)  # a pacing step first: the day's plan starts from what is spent then
    ex = Exchange([busy], seed=21)
    try:
        for _ in range(150):
            ex.round(0)
    finally:
        ex.close()
    spent_even = [i for i in even if busy.server.ledger.spent_micros[i] > 0]
    assert spent_even
    assert idle.server.ledger.spent_micros.sum() == 0
    deadline = time.monotonic() + 15
    while not (idle.server.pipeline.core.pacing[spent_even] < 0.9).all():
        pc = idle.server.pipeline.pacing
        assert time.monotonic() < deadline, (pc._rate[spent_even].tolist(),
                                             pc.planned_micros[spent_even].tolist())
        time.sleep(0.2)


def test_frequency_counts_are_set_in_the_compiled_table():
    """set_counts writes each key's count in its current window, reports what changed,
    and leaves other keys alone."""
    from adbid._decision import FrequencyTable

    t = FrequencyTable(1 << 10)
    t.add(7, 1, 1_000, 3_600, 2)
    users = np.array([7, 8, 9], np.uint64)
    rows = np.array([1, 1, 2], np.int32)
    windows = np.full(3, 3_600, np.int64)
    assert t.set_counts(users, rows, windows, np.array([5, 2, 0], np.int64), 1_010) == 2
    assert [t.count(u, r, 1_010, 3_600) for u, r in ((7, 1), (8, 1), (9, 2), (7, 2))] == \
        [5, 2, 0, 0]
    assert t.set_counts(users, rows, windows, np.array([5, 2, 0], np.int64), 1_020) == 0


def test_a_redis_with_a_password_is_reached_and_the_password_never_shown(
        server_factory, tmp_path):
    """redis://:PASSWORD@host: the replica syncs; Status shows the store without it."""
    try:
        r = RedisProc(tmp_path / "redis-auth", password="s3cret-pw").start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        (server,) = replicas(server_factory, r.url, 1)
        s = status(server)
        assert s.shared_available and s.shared_syncs > 0
        assert "s3cret-pw" not in s.shared_store and s.shared_store.startswith("redis://***@")
        assert "s3cret-pw" not in str(list(s.shared_processes))
    finally:
        server.stop()
        r.stop()

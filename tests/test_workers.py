"""`adbid serve --workers N`: processes sharing one port, each with 1/N of every budget."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from adbid.money.units import impression_cost_micros
from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World
from adbid.world.demo_traffic import make_events

BIN = Path(sys.executable).parent / "adbid"
SERVING = re.compile(r"worker (\d)/(\d): serving .* on 127\.0\.0\.1:(\d+) .*admin on "
                     r"127\.0\.0\.1:(\d+)")


def start(world: Path, ledger: Path, workers: int, tmp_path: Path, *flags: str):
    log = (tmp_path / f"serve-{time.monotonic_ns()}.log").open("w+")
    proc = subprocess.Popen(
        [BIN, "serve", "--world", str(world), "--workers", str(workers), "--port", "0",
         "--admin-port", "0", "--metrics-port", "0", "--ledger", str(ledger),
         "--log-format", "text", *flags], stderr=log,
        env={**os.environ, "ADBID_HOME": str(tmp_path)})
    return proc, log


def wait_serving(proc, log, workers: int) -> tuple[int, list[int]]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        log.seek(0)
        found = {m.group(1): (int(m.group(3)), int(m.group(4)))
                 for m in SERVING.finditer(log.read())}
        if len(found) == workers:
            ports = {p for p, _ in found.values()}
            assert len(ports) == 1, found  # one shared port
            return ports.pop(), [a for _, a in found.values()]
        assert proc.poll() is None, log.read()
        time.sleep(0.2)
    raise AssertionError("workers did not start")


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def status(admin_port: int, metadata: tuple = ()) -> admin_pb2.StatusResponse:
    with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
        return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=10,
                                                   metadata=metadata)


def test_two_workers_share_the_port_and_split_every_budget(tiny_world_dir, tmp_path):
    world = World.load(tiny_world_dir)
    proc, log = start(tiny_world_dir, tmp_path / "ledger", 2, tmp_path)
    try:
        port, admins = wait_serving(proc, log, 2)
        # The kernel picks a worker per connection: new connections until both have bid.
        rng = np.random.default_rng(0)
        for attempt in range(40):
            opts = [("adbid.test.connection", attempt)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                resp = bidder_pb2_grpc.BidderStub(ch).Bid(pb.BidRequest(
                    events=make_events(32, rng, n_users=2_000)), timeout=10)
                assert len(resp.decisions) == 32
            if attempt >= 3 and all(status(a).events_total > 0 for a in admins):
                break
        statuses = [status(a) for a in admins]
        assert all(s.events_total > 0 for s in statuses), [s.events_total for s in statuses]
        # Every campaign's slices add up to its budget exactly; each worker's books stay
        # inside its own slice.
        for row, cid in enumerate(world.campaigns.ids):
            slices = [next(c for c in s.campaigns if c.campaign_id == cid) for s in statuses]
            assert sum(c.budget_micros for c in slices) == int(world.campaigns.budget_micros[row])
            assert max(c.budget_micros for c in slices) - min(c.budget_micros for c in slices) <= 1
            assert all(c.spent_micros + c.reserved_micros <= c.budget_micros for c in slices)
        assert sum(c.reserved_micros for s in statuses for c in s.campaigns) > 0
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            stop(proc)
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == [
        "notice.key", "worker-0", "worker-1", "workers"]


def test_a_ledger_kept_by_another_worker_count_is_refused(tiny_world_dir, tmp_path):
    ledger = tmp_path / "ledger"
    proc, log = start(tiny_world_dir, ledger, 2, tmp_path)
    wait_serving(proc, log, 2)
    assert stop(proc) == 0
    r = subprocess.run([BIN, "serve", "--world", str(tiny_world_dir), "--workers", "3",
                        "--port", "0", "--admin-port", "0", "--ledger", str(ledger)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ADBID_HOME": str(tmp_path)})
    assert r.returncode == 2
    assert "holds the books of 2 workers" in " ".join((r.stdout + r.stderr).split())


@pytest.mark.parametrize("admin_port, problem", [("-1", "needs Admin on its own port")])
def test_workers_refuse_admin_on_the_shared_port(tiny_world_dir, tmp_path, admin_port, problem):
    r = subprocess.run([BIN, "serve", "--world", str(tiny_world_dir), "--workers", "2",
                        "--port", "0", "--admin-port", admin_port,
                        "--ledger", str(tmp_path / "l")],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ADBID_HOME": str(tmp_path)})
    assert r.returncode == 2 and problem in " ".join((r.stdout + r.stderr).split())


def test_workers_exit_when_the_supervisor_is_killed(tiny_world_dir, tmp_path):
    proc, log = start(tiny_world_dir, tmp_path / "ledger", 2, tmp_path)
    try:
        wait_serving(proc, log, 2)
        children = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 2
    finally:
        proc.kill()  # no chance to forward anything
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(running, children)):
        time.sleep(0.2)
    alive = [c for c in children if running(c)]
    for c in alive:
        os.kill(c, signal.SIGKILL)
    assert not alive, "workers kept serving without their supervisor"


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def start_with_openrtb(world: Path, tmp_path: Path):
    """Two workers on a free OpenRTB port: (process, log, the port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, log = start(world, tmp_path / "ledger", 2, tmp_path, "--openrtb-port", str(port))
    return proc, log, port


def test_workers_share_one_openrtb_port(tiny_world_dir, tmp_path):
    proc, log, port = start_with_openrtb(tiny_world_dir, tmp_path)
    try:
        wait_serving(proc, log, 2)
        log.seek(0)
        assert log.read().count(f"OpenRTB 2.6 on http://127.0.0.1:{port}/") == 2
        request = {"id": "w", "tmax": 500,
                   "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01}],
                   "site": {"domain": "news.example", "keywords": "football"}}
        statuses = []
        for i in range(20):  # a new connection each: the kernel spreads them over both
            body = json.dumps({**request, "id": f"w{i}"}).encode()
            r = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/openrtb2/bid", body,
                {"Content-Type": "application/json"}), timeout=10)
            statuses.append(r.status)
        assert set(statuses) <= {200, 204} and 200 in statuses
    finally:
        assert stop(proc) == 0


def test_a_notice_reaching_another_worker_is_booked_by_the_one_that_bid(tiny_world_dir,
                                                                       tmp_path):
    """Notice URLs go to the shared port, so the kernel hands each to either worker; each
    bid's billing must still be booked once, in the books of the worker that made it."""
    proc, log, port = start_with_openrtb(tiny_world_dir, tmp_path)
    try:
        _, admins = wait_serving(proc, log, 2)
        bids = []
        for i in range(24):  # a new connection each: the kernel spreads them over both
            body = json.dumps({
                "id": f"n{i}", "tmax": 500,
                "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01}],
                "site": {"domain": "news.example", "keywords": "football soccer"},
                "user": {"buyeruid": f"u{i:07d}"}}).encode()
            r = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/openrtb2/bid", body,
                {"Content-Type": "application/json"}), timeout=10)
            if r.status == 200:
                bids.append(json.loads(r.read())["seatbid"][0]["bid"][0])
        workers = {re.search(r"[?&]w=(\d)", b["burl"]).group(1) for b in bids}
        assert workers == {"0", "1"}, "both workers bid"
        expected = 0
        for b in bids:  # billed at the bid price, each on a new connection
            url = b["burl"].replace("${AUCTION_PRICE}", str(b["price"])).replace(
                "${AUCTION_CURRENCY}", "USD")
            for _ in range(2):  # the second is a duplicate, wherever it lands
                assert urllib.request.urlopen(url, timeout=10).status == 204
            expected += -(-round(b["price"] * 1e6) // 1000)
        spent = sum(c.spent_micros for a in admins for c in status(a).campaigns)
        assert spent == expected
    finally:
        assert stop(proc) == 0


def test_a_grpc_notice_on_another_connection_is_booked_by_the_worker_that_bid(
        tiny_world_dir, tmp_path):
    """A client that reports outcomes over another connection than it bid on (a separate
    notice service) reaches either worker; each win must still be booked once, by the
    worker that made the bid, and an id no worker knows is still refused."""
    proc, log = start(tiny_world_dir, tmp_path / "ledger", 2, tmp_path)
    try:
        port, admins = wait_serving(proc, log, 2)
        rng = np.random.default_rng(5)
        bids: list[pb.Decision] = []
        for attempt in range(40):  # new connections until both workers have bid
            opts = [("adbid.test.connection", attempt)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                resp = bidder_pb2_grpc.BidderStub(ch).Bid(pb.BidRequest(
                    events=make_events(8, rng, n_users=2_000, id_prefix=f"g{attempt}-")),
                    timeout=10)
                bids += [d for d in resp.decisions if d.bid]
            if attempt >= 3 and all(status(a).bids_total > 0 for a in admins):
                break
        assert all(status(a).bids_total > 0 for a in admins), "both workers bid"
        expected = 0
        for k, d in enumerate(bids):  # each notice on a connection of its own, twice
            win = pb.Outcome(request_id=d.request_id, type=pb.OUTCOME_TYPE_WIN,
                             clearing_price_cpm_micros=d.price_cpm_micros)
            for again in range(2):
                opts = [("adbid.test.notice", 2 * k + again)]
                with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                    (r,) = bidder_pb2_grpc.BidderStub(ch).ReportOutcomes(
                        pb.ReportOutcomesRequest(outcomes=[win]), timeout=10).results
                assert r.accepted and r.duplicate == bool(again), (d.request_id, r)
            expected += impression_cost_micros(d.price_cpm_micros)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            (r,) = bidder_pb2_grpc.BidderStub(ch).ReportOutcomes(pb.ReportOutcomesRequest(
                outcomes=[pb.Outcome(request_id="never-bid", type=pb.OUTCOME_TYPE_WIN)]),
                timeout=10).results
        assert not r.accepted and "no bid with this id" in r.error
        statuses = [status(a) for a in admins]
        assert sum(c.spent_micros for s in statuses for c in s.campaigns) == expected
        assert sum(c.reserved_micros for s in statuses for c in s.campaigns) == 0
    finally:
        assert stop(proc) == 0


def test_a_worker_that_cannot_be_reached_is_passed_over_by_the_relay(tmp_path):
    """The relay asks every other worker for the ids it does not know; one that does not
    answer (nothing listens at its address, or it has written none yet) is passed over,
    and those notices stay refused where they arrived, for the exchange to retry. An Admin
    change it could not pass on is named, worker by worker."""
    import asyncio

    from adbid.edge.relay import WorkerRelay, write_address

    for i in range(3):
        (tmp_path / f"worker-{i}").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    write_address(tmp_path / "worker-1", dead)  # worker 2 has no address file at all
    relay = WorkerRelay(tmp_path, 0, 3, "secret")

    async def ask() -> tuple[dict, list[str]]:
        try:
            return (await relay.find([pb.Outcome(request_id="r1", type=pb.OUTCOME_TYPE_WIN)]),
                    await relay.admin_to_others("UpdateCampaign", admin_pb2.UpdateCampaignRequest(
                        campaign_id="c0001", active=False), ()))
        finally:
            await relay.close()

    found, failed = asyncio.run(ask())
    assert found == {}
    # An Admin change is reported as not made on either (the caller is told to repeat it).
    assert sorted(f.split(":")[0].split(" cannot")[0] for f in failed) == ["worker 1", "worker 2"]


def test_admin_changes_on_one_worker_reach_them_all(tiny_world_dir, tmp_path):
    """`adbid campaign` and `adbid reload` talk to one Admin port (worker 0's by default):
    a budget change and a reload must still reach every worker, or the others would go on
    with the old budget slice or the old world. (With an Admin token: the caller's goes
    along.)"""
    from adbid.world.demo_world import DemoWorldSpec, build

    other = tmp_path / "other-world"
    build(other, DemoWorldSpec.tiny(seed=8), progress=False)
    world = World.load(tiny_world_dir)
    cid = world.campaigns.ids[3]
    proc, log = start(tiny_world_dir, tmp_path / "ledger", 2, tmp_path,
                      "--admin-token", "s3cret")
    bearer = (("authorization", "Bearer s3cret"),)
    try:
        _, admins = wait_serving(proc, log, 2)
        with grpc.insecure_channel(f"127.0.0.1:{admins[0]}") as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(
                campaign_id=cid, budget_micros=77_000_000, reason="test"), timeout=30,
                metadata=bearer)
            admin.UpdateCampaign(admin_pb2.UpdateCampaignRequest(
                campaign_id=world.campaigns.ids[4], active=False, reason="test"), timeout=30,
                metadata=bearer)
            reply = admin.Reload(admin_pb2.ReloadRequest(world_path=str(other)), timeout=120,
                                 metadata=bearer)
        statuses = [status(a, bearer) for a in admins]
        slices = [next(c for c in s.campaigns if c.campaign_id == cid) for s in statuses]
        assert sum(c.budget_micros for c in slices) == 77_000_000, slices
        assert all(not next(c for c in s.campaigns
                            if c.campaign_id == world.campaigns.ids[4]).active for s in statuses)
        assert {s.world_version for s in statuses} == {reply.world_version}
        assert reply.world_version != reply.previous_version
        # The port the workers pass these on over answers them alone.
        relay = (tmp_path / "ledger" / "worker-1" / "notices.addr").read_text().strip()
        with grpc.insecure_channel(relay) as ch:
            for call in (lambda: admin_pb2_grpc.AdminStub(ch).UpdateCampaign(
                            admin_pb2.UpdateCampaignRequest(campaign_id=cid, active=False),
                            timeout=10),
                         lambda: bidder_pb2_grpc.BidderStub(ch).ReportOutcomes(
                             pb.ReportOutcomesRequest(), timeout=10)):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert next(c for c in status(admins[1], bearer).campaigns
                    if c.campaign_id == cid).active
    finally:
        assert stop(proc) == 0

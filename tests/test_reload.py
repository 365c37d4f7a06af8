"""Hot reload: validated, atomic, under load with no failed request; bad worlds refused."""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world import artifacts as world_mod
from adbid.world.demo_traffic import make_events
from adbid.world.demo_world import DemoWorldSpec, build


@pytest.fixture(scope="module")
def world_b(tmp_path_factory):
    """Another tiny world: same campaign ids, different seed, hence another model."""
    out = tmp_path_factory.mktemp("worlds") / "tiny-b"
    build(out, DemoWorldSpec.tiny(seed=8), progress=False)
    return out


def reload(ch, path) -> admin_pb2.ReloadResponse:
    return admin_pb2_grpc.AdminStub(ch).Reload(admin_pb2.ReloadRequest(world_path=str(path)),
                                               timeout=60)


def rewrite(src, dst, edit) -> None:
    """Copy a world, change campaigns.json, and re-checksum it so only `edit` is wrong."""
    shutil.copytree(src, dst)
    records = json.loads((dst / "campaigns.json").read_text())
    (dst / "campaigns.json").write_text(json.dumps(edit(records)))
    manifest = json.loads((dst / "manifest.json").read_text())
    info = {k: v for k, v in manifest.items() if k not in ("files", "version", "format")}
    world_mod.write_manifest(dst, {**info, "name": "edited"})


def test_reloads_under_load_fail_no_request_and_switch_the_model(server, tiny_world_dir,
                                                                 world_b):
    stop = threading.Event()
    failures, versions = [], []
    probe = make_events(64, np.random.default_rng(5), n_users=2_000, test=True)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(server.target) as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            while not stop.is_set() and len(versions) < 5000:
                try:
                    r = stub.Bid(pb.BidRequest(events=make_events(32, rng, n_users=2_000)),
                                 timeout=10)
                    assert len(r.decisions) == 32
                    versions.append(r.world_version)
                except Exception as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    scores = {}

    def traffic_flows(calls: int = 12, within_s: float = 20.0) -> None:
        """Wait until the clients have had `calls` more answers, so that every reload
        happens under load however fast this machine reloads."""
        start, ends = len(versions), time.monotonic() + within_s
        while len(versions) < start + calls and not failures and time.monotonic() < ends:
            time.sleep(0.005)

    try:
        with grpc.insecure_channel(server.target) as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            for path in (world_b, tiny_world_dir, world_b, tiny_world_dir, world_b):
                traffic_flows()
                r = reload(ch, path)
                assert r.world_version != r.previous_version
                answer = stub.Bid(pb.BidRequest(events=probe), timeout=10)
                assert answer.world_version == r.world_version  # new batches use the new world
                scores[r.world_version] = [d.score for d in answer.decisions]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert len(set(versions)) == 2 and len(versions) > 50
    a, b = scores.values()
    assert a != b, "the two worlds' models score the same events differently"


def test_bad_worlds_are_refused_and_the_old_one_keeps_serving(server, channel, tiny_world_dir,
                                                              tmp_path):
    before = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest()).world_version
    broken_model = tmp_path / "broken-model"
    rewrite(tiny_world_dir, broken_model, lambda r: r)
    (broken_model / "model.onnx").write_bytes(b"not a model")
    world_mod.write_manifest(broken_model, {"name": "broken"})
    reordered = tmp_path / "reordered"
    rewrite(tiny_world_dir, reordered, lambda r: [r[1], r[0], *r[2:]])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_world_dir, corrupt)
    (corrupt / "ads.faiss").write_bytes(b"x")
    for path, reason in ((tmp_path / "missing", "no manifest.json"),
                         (corrupt, "checksum"), (broken_model, "model"),
                         (reordered, "row 0")):
        with pytest.raises(grpc.RpcError) as err:
            reload(channel, path)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason in err.value.details(), err.value.details()
        status = admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest())
        assert status.world_version == before
        r = bidder_pb2_grpc.BidderStub(channel).Bid(
            pb.BidRequest(events=make_events(8, np.random.default_rng(1), n_users=2_000)),
            timeout=5)
        assert len(r.decisions) == 8 and r.world_version == before


def test_a_world_may_add_campaigns_at_the_end(server, channel, tiny_world_dir, tmp_path):
    extra = {"campaign_id": "c-new", "value_per_action_micros": 50_000,
             "budget_micros": 7_000_000}
    grown = tmp_path / "grown"
    rewrite(tiny_world_dir, grown, lambda r: [*r, extra])
    admin = admin_pb2_grpc.AdminStub(channel)
    n_before = len(admin.Status(admin_pb2.StatusRequest()).campaigns)
    reload(channel, grown)
    campaigns = {c.campaign_id: c for c in admin.Status(admin_pb2.StatusRequest()).campaigns}
    assert len(campaigns) == n_before + 1
    assert campaigns["c-new"].budget_micros == 7_000_000


def test_twenty_reloads_under_load_fail_no_call_and_share_what_did_not_change(
        server_factory, tiny_world_dir, tmp_path):
    """An operator's deploys: the same world written to two directories, reloaded in turn
    20 times while clients bid with a 100 ms deadline. No call fails, none is answered
    late, and what did not change (users, index, model, contexts) is shared by the new
    pipeline rather than loaded and built again."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_world_dir, copy)
    s = server_factory()
    first = s.server.pipeline
    stop = threading.Event()
    failures: list[str] = []
    calls = [0]

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(s.target) as ch:
            stub = bidder_pb2_grpc.BidderStub(ch)
            while not stop.is_set() and calls[0] < 20_000:
                try:
                    r = stub.Bid(pb.BidRequest(events=make_events(16, rng, n_users=2_000),
                                               deadline_ms=100), timeout=0.1)
                    assert len(r.decisions) == 16
                    calls[0] += 1
                except Exception as exc:
                    failures.append(repr(exc)[:200])
                stop.wait(0.005)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    try:
        with grpc.insecure_channel(s.target) as ch:
            for i in range(20):
                reload(ch, copy if i % 2 == 0 else tiny_world_dir)
                stop.wait(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [], f"{len(failures)} of {calls[0]} calls failed: {failures[:3]}"
    assert calls[0] > 100
    now = s.server.pipeline
    assert now is not first and now.world.path == tiny_world_dir
    assert set(now.world.shared) == {"users", "index", "contexts", "model"}
    assert (now.users, now.retriever, now.scorer, now.contexts) == (
        first.users, first.retriever, first.scorer, first.contexts)
    # The campaigns are the new world's own: a reload still changes what it must.
    assert now.core is not first.core and now.world.campaigns is not first.world.campaigns

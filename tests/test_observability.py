"""Metrics on the Prometheus port, the dashboard's queries, JSON logs, the config file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc
from adbid.world.demo_traffic import make_events

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent / "adbid"
REQUIRED = ["adbid_requests_total", "adbid_events_total", "adbid_bids_total",
            "adbid_no_bids_total", "adbid_errors_total", "adbid_stage_seconds_bucket",
            "adbid_batch_events_bucket", "adbid_execution_provider_info", "adbid_world_info",
            "adbid_shed_events_total", "adbid_campaign_spent_micros"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_cover_what_an_operator_needs_and_the_dashboard_uses(server_factory):
    s = server_factory(metrics_port=-1)
    import grpc

    with grpc.insecure_channel(s.target) as ch:
        stub = bidder_pb2_grpc.BidderStub(ch)
        stub.Bid(pb.BidRequest(events=make_events(64, np.random.default_rng(0), n_users=2_000)),
                 timeout=5)
    s.call(s.server.pipeline.ledger.flush())
    time.sleep(1.2)  # one housekeeping round publishes the campaign gauges
    text = scrape(s.server.metrics_port)
    present = set(re.findall(r"^(adbid_[a-z_]+)", text, re.M))
    for name in REQUIRED:
        assert name in present, name
    for stage in ("decode", "lookup", "retrieval", "scoring", "decision", "encode", "total"):
        assert f'adbid_stage_seconds_count{{stage="{stage}"}}' in text
    # The provider the session runs on (CUDA on a GPU machine, else the CPU), not a guess.
    assert f'provider="{s.server.pipeline.scorer.provider}"' in text
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"\b(adbid_[a-z_]+)", t["expr"])}
    assert used and not {m for m in used if m not in present}, used - present


def test_json_logs_and_a_config_file(tiny_world_dir, tmp_path):
    cfg = tmp_path / "adbid.toml"
    cfg.write_text(f'world = "{tiny_world_dir}"\nport = 0\nmetrics_port = 0\nadmin_port = 0\n'
                   f'top_k = 7\nshading = 0.5\nledger = "{tmp_path / "ledger"}"\n')
    env = {**os.environ, "ADBID_HOME": str(tmp_path), "ADBID_SHADING": "0.6"}
    log = tmp_path / "serve.log"
    with log.open("w") as f:
        proc = subprocess.Popen([BIN, "serve", "--config", str(cfg), "--top-k", "9"],
                                stderr=f, env=env)
    try:
        deadline = time.monotonic() + 60
        while "serving world" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    finally:
        proc.terminate()
        proc.wait(30)
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    config = next(x for x in lines if x["message"].startswith("configuration"))["config"]
    # flag > environment > file > default
    assert config["top_k"] == 9 and config["shading"] == 0.6
    assert config["world"] == str(tiny_world_dir) and config["port"] == 0
    warm = next(x for x in lines if x["message"].startswith("warm-up"))
    assert warm["request_id"] == "warm-up"
    # A served process runs on uvloop by default (the in-process test servers on asyncio's).
    serving = next(x for x in lines if "serving world" in x["message"])
    assert serving["message"].endswith("event loop uvloop"), serving["message"]


def test_a_bad_config_file_is_refused_with_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('prot = 5\n')
    r = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env={**os.environ, "ADBID_HOME": str(tmp_path)})
    assert r.returncode != 0 and "prot" in r.stdout + r.stderr


def test_stage_summary_matches_hdrh():
    """Status reads percentiles with numpy (hdrh's own walk held the loop ~1 s under load);
    they must be the values hdrh itself reports, and the mean exact."""
    import random

    from adbid.metrics import StageTimers
    from adbid.stages import STAGES

    timers = StageTimers(STAGES)
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.2) for _ in range(5000)]
    for v in values:
        timers.record("decode", v)
    got = timers.summary()
    hist = timers._hist["decode"]
    assert got["decode"]["count"] == 5000
    assert got["decode"]["p50_us"] == hist.get_value_at_percentile(50)
    assert got["decode"]["p99_us"] == hist.get_value_at_percentile(99)
    exact_mean = sum(max(1, int(v * 1e6)) for v in values) / len(values)
    assert abs(got["decode"]["mean_us"] - exact_mean) < 1e-6
    assert got["ledger"] == {"count": 0, "mean_us": 0.0, "p50_us": 0, "p99_us": 0}


def test_a_setting_outside_its_choices_is_refused_with_its_name(tmp_path):
    r = subprocess.run([BIN, "serve", "--openrtb-nobid", "maybe"], capture_output=True,
                       text=True, env={**os.environ, "ADBID_HOME": str(tmp_path)}, timeout=60)
    assert r.returncode == 2 and "openrtb_nobid" in r.stdout + r.stderr

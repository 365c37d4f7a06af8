import json
import shutil

import pytest

from adbid.world.artifacts import World, WorldError


def test_manifest_records_model_quality_and_checksums(tiny_world):
    m = tiny_world.manifest
    assert m["version"].startswith("demo-s7-")
    assert 0.5 < m["model"]["auc"] <= 1 and 0.5 < m["model"]["ground_truth_auc"] <= 1
    # The trained model gets close to what the true probabilities reach.
    assert m["model"]["auc"] > m["model"]["ground_truth_auc"] - 0.05
    assert set(m["files"]) >= {"model.onnx", "ads.faiss", "campaigns.json"}


def test_same_seed_same_world(tmp_path, tiny_world):
    from adbid.world.demo_world import DemoWorldSpec, build

    m = build(tmp_path / "again", DemoWorldSpec.tiny(), progress=False)
    assert m["version"] == tiny_world.version


def test_corrupt_or_inconsistent_worlds_are_refused(tmp_path, tiny_world_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_world_dir, bad)
    with (bad / "campaigns.json").open("a") as f:
        f.write(" ")
    with pytest.raises(WorldError, match="checksum"):
        World.load(bad)
    records = json.loads((tiny_world_dir / "campaigns.json").read_text())
    records[0]["budget_micros"] = -1
    (bad / "campaigns.json").write_text(json.dumps(records))
    with pytest.raises(WorldError, match="budget_micros"):
        World.load(bad, verify_checksums=False)
    with pytest.raises(WorldError, match=r"no manifest\.json"):
        World.load(tmp_path / "missing")


def test_reliability_bins_by_count_and_weighs_the_gaps():
    import numpy as np

    from adbid.world.intent_model import reliability

    p = np.array([0.1] * 5 + [0.5] * 5)
    clicked = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], dtype=bool)  # 1 in 5, then 4 in 5
    r = reliability(p, clicked, bins=2)
    assert r["curve"] == [[0.1, 0.2, 5], [0.5, 0.8, 5]]
    assert abs(r["ece"] - 0.2) < 1e-12  # half the events off by 0.1, half by 0.3


def test_the_demo_model_is_calibrated_inside_its_graph(tiny_world_dir, tiny_world):
    """An uncalibrated MLP (its held-out calibration error above 0.01) gets Platt scaling
    in the exported graph; the world's held-out error is then under the target, near what
    the true probabilities score on the same impressions (sampling noise)."""
    model = tiny_world.manifest["model"]
    assert model["ece_before_calibration"] > 0.01 and model["calibration"]["method"] == "platt"
    assert model["ece"] <= 0.01 and model["ece"] < model["ece_before_calibration"]
    assert model["max_export_error"] < 1e-4  # the graph computes sigmoid(a * logit + b)
    assert len(model["reliability"]) == 10

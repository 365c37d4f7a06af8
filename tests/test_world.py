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

"""`adbid demo-world`, and the default demo world's upkeep: built when missing, rebuilt when
an older generator built it (`make serve` and `make test` on a machine that kept one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from adbid import logs
from adbid.config import default_world_dir

console = Console()


def ensure_world(world: Path, seed: int) -> None:
    """Build the demo world at `world` if it is the default location and missing, or was
    built by an older demo-world generator."""
    from adbid.world import artifacts as world_mod
    from adbid.world.demo_world import BUILDER

    manifest = world / world_mod.MANIFEST
    default = world.resolve() == default_world_dir().resolve()
    if manifest.is_file():
        if not default or json.loads(manifest.read_text()).get("builder") == BUILDER:
            return
        console.print(f"[bold]The demo world at {world} was built by an older generator: "
                      f"rebuilding it (seed {seed})[/bold]")
        build_demo(world, seed, None)
        return
    if not default:
        raise typer.BadParameter(f"no world at {world}; build one with "
                                 f"`adbid demo-world --out {world}`", param_hint="--world")
    console.print(f"[bold]No world at {world}: building the demo world (seed {seed})[/bold]")
    build_demo(world, seed, None)


def build_demo(out: Path, seed: int, spec_overrides: dict | None) -> dict:
    from adbid.world.demo_world import DemoWorldSpec, build

    spec = DemoWorldSpec(seed=seed, **(spec_overrides or {}))
    manifest = build(out, spec, progress=sys.stderr.isatty())
    m, c = manifest["model"], manifest["counts"]
    console.print(
        f"world [bold]{manifest['version']}[/bold] at {out} in {manifest['build_seconds']} s: "
        f"{c['users']:,} users, {c['ads']:,} ads, {c['campaigns']} campaigns, d={c['dim']}, "
        f"index {manifest['index']}\n"
        f"intent model {m['kind']}: held-out AUC [bold]{m['auc']:.4f}[/bold] "
        f"(ground-truth probabilities reach {m['ground_truth_auc']:.4f}) on "
        f"{m['heldout_impressions']:,} impressions, click rate {m['click_rate']:.3f}\n"
        f"calibration: expected calibration error [bold]{m['ece']:.4f}[/bold] "
        f"({m['calibration']['method']}; {m['ece_before_calibration']:.4f} before; the true "
        f"probabilities score {m['ground_truth_ece']:.4f} on the same impressions)")
    return manifest


def demo_world(
    out: Path = typer.Option(default_world_dir(), help="Directory to write (replaced if present)."),
    seed: int = typer.Option(42, help="Everything is drawn from this seed."),
    users: int = typer.Option(100_000, help="Users in the embedding store."),
    campaigns: int = typer.Option(300, help="Campaigns."),
    ads_per_campaign: int = typer.Option(10, help="Ads (creatives) per campaign."),
    ads: int = typer.Option(0, help="Ads in the catalogue, spread evenly over the campaigns "
                            "(overrides --ads-per-campaign; 0: campaigns x ads per campaign). "
                            "Above 10,000 the index is inverted lists (IVF), else exact."),
    impressions: int = typer.Option(200_000, help="Logged impressions to train on (80%) and test."),
    dim: int = typer.Option(64, help="Embedding dimension."),
    user_dtype: str = typer.Option("float32", help="Stored user embeddings: float32, or "
                                   "float16 for half the memory (the model is trained on "
                                   "float32; benchmarks/embedding_precision.py measures the "
                                   "difference)."),
) -> None:
    """Build the synthetic demo world: users, ads, campaigns and a trained ONNX intent model."""
    logs.setup("text", False)
    if user_dtype not in ("float32", "float16"):
        raise typer.BadParameter("float32 or float16", param_hint="--user-dtype")
    if ads:
        ads_per_campaign = max(1, round(ads / campaigns))
    build_demo(out, seed, {"users": users, "campaigns": campaigns,
                            "ads_per_campaign": ads_per_campaign, "impressions": impressions,
                            "user_dtype": user_dtype,
                            "dim": dim})

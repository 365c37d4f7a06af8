"""`adbid simulate`: the command around adbid.bench.simulate (options, table, files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adbid.bench.simulate import STRATEGIES, simulate
from adbid.bench.simulate import plot as plot_report
from adbid.config import default_world_dir

console = Console()


def simulate_command(
    json_out: Path = typer.Option(None, "--json", help="Write the report here (JSON)."),
    plot: Path = typer.Option(None, help="Plot surplus and spend by hour per strategy (PNG)."),
    events: int = typer.Option(50_000, help="Auctions in the simulated day."),
    seed: int = typer.Option(1, help="Markets, traffic and conversions are drawn from it."),
    strategies: str = typer.Option("fixed,learned,truthful,oracle",
                                   help="Shading strategies, each on the same auctions."),
    budget_scale: float = typer.Option(0.0002, help="Every other campaign's budget x this "
                                       "(budgets that bind); the rest keep the world's."),
    world: Path = typer.Option(default_world_dir(), help="World directory (the demo world)."),
    pacing_forecast: bool = typer.Option(
        False, help="Even-paced campaigns plan along the day's traffic curve (--pacing-profile; "
        "the exact curve, as a perfect forecast), instead of evenly over the day."),
    conversion_bonus: float = typer.Option(
        0.0, "--conversion-bonus-micros", min=0.0,
        help="Learned and oracle shading bid as if a conversion were worth this many "
        "micros more than its value per action: fewer micros of surplus, more conversions."),
) -> None:
    """A simulated day of auctions: each shading strategy bids the same auctions through the
    real pipeline; surplus, spend, conversions, wins and pacing per strategy."""
    names = tuple(x.strip() for x in strategies.split(",") if x.strip())
    if unknown := [n for n in names if n not in STRATEGIES]:
        raise typer.BadParameter(f"{unknown}: choose from {', '.join(STRATEGIES)}",
                                 param_hint="--strategies")
    if not (world / "manifest.json").exists():
        raise typer.BadParameter(f"no world at {world}; build one with `adbid demo-world`",
                                 param_hint="--world")
    report = simulate(world, names, events, seed, budget_scale, progress=sys.stderr.isatty(),
                      forecast=pacing_forecast, conversion_bonus=conversion_bonus)
    t = Table(title=f"a simulated day: {events:,} auctions, seed {seed}")
    for col in ("strategy", "surplus", "spend", "conversions", "wins", "win rate",
                "budget spent", "worst hour pacing"):
        t.add_column(col)
    for name, r in report["strategies"].items():
        t.add_row(name, f"{r['surplus_micros'] / 1e6:,.2f}", f"{r['spend_micros'] / 1e6:,.2f}",
                  f"{r['conversions']:,}", f"{r['wins']:,}", f"{r['win_rate']:.1%}",
                  f"{r['budget_spent_fraction']:.1%}", f"{r['worst_hour_pacing_error']:.1%}")
    console.print(t)
    if json_out:
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        console.print(f"report: {json_out}")
    if plot:
        plot_report(report, plot)
        console.print(f"plot: {plot}")

"""Surplus against conversions: how much surplus each shading strategy keeps when it
bids for more conversions.

`adbid simulate` compares strategies on one simulated day; surplus-maximising shading
bids lower than the fixed constant and so wins, and converts, less. This sweeps the
conversion bonus (`adbid simulate --conversion-bonus-micros`: learned and oracle bid as
if a conversion were worth that much more, the Lagrangian of "the most surplus at no
fewer than so many conversions") and reports, per seed, every point as a share of the
oracle's surplus (without bonus) and of the fixed strategy's conversions, with truthful
bidding (the most conversions a bid at or under value can buy) for reference. The
oracle's curve is the frontier no strategy that knows only the market's distribution can
pass: its surplus where it reaches fixed's conversions bounds what any such strategy
makes at no fewer conversions than fixed.

    python benchmarks/shading_frontier.py [--seeds 5,6,7] [--bonuses 0,160000,...]
                                          [--events 50000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write

BONUSES = (0, 160_000, 320_000, 640_000, 1_280_000, 2_560_000, 5_120_000)


def one(job: tuple[int, str, float, int]) -> tuple[int, str, float, dict]:
    from adbid.bench.simulate import simulate
    from adbid.config import default_world_dir

    seed, strategy, bonus, events = job
    r = simulate(default_world_dir(), (strategy,), events, seed, progress=False,
                 conversion_bonus=bonus)["strategies"][strategy]
    return seed, strategy, bonus, {k: r[k] for k in ("surplus_micros", "conversions", "wins",
                                                     "budget_spent_fraction")}


def crossing(points: list[tuple[float, float]]) -> float | None:
    """The surplus share where the conversions share reaches 1, by linear interpolation
    between the sweep's points (conversions share, surplus share); None if never."""
    points = sorted(points)
    for (c0, s0), (c1, s1) in itertools.pairwise(points):
        if c0 < 1.0 <= c1:
            return s0 + (s1 - s0) * (1.0 - c0) / (c1 - c0)
    return points[0][1] if points and points[0][0] >= 1.0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="5,6,7")
    ap.add_argument("--bonuses", default=",".join(map(str, BONUSES)))
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    bonuses = [float(x) for x in args.bonuses.split(",")]
    jobs = [(s, name, 0.0, args.events) for s in seeds for name in ("fixed", "truthful")]
    jobs += [(s, name, b, args.events) for s in seeds for name in ("oracle", "learned")
             for b in bonuses]
    runs: dict = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for seed, name, bonus, r in pool.map(one, jobs):
            runs.setdefault(seed, {}).setdefault(name, {})[bonus] = r
            print(f"  seed {seed} {name:8s} bonus {bonus:>11,.0f}: surplus "
                  f"{r['surplus_micros'] / 1e6:8.2f}, conversions {r['conversions']:,}",
                  flush=True)
    summary: dict = {}
    for seed in seeds:
        ref = runs[seed]
        best, conv = ref["oracle"][0.0]["surplus_micros"], ref["fixed"][0.0]["conversions"]
        print(f"seed {seed}: share of the oracle's surplus / of fixed's conversions")
        for name in ("fixed", "truthful", "oracle", "learned"):
            pts = [(b, r["conversions"] / conv, r["surplus_micros"] / best)
                   for b, r in sorted(ref[name].items())]
            print(f"  {name:8s} " + "  ".join(f"[{b / 1e3:,.0f}k] {s:.1%}/{c:.1%}"
                                              for b, c, s in pts))
            if name in ("oracle", "learned"):
                at = crossing([(c, s) for _, c, s in pts])
                summary.setdefault(name, []).append(at)
                print(f"  {'':8s} surplus at fixed's conversions: "
                      + ("never reached" if at is None else f"{at:.1%} of the oracle's"))
    for name, xs in summary.items():
        got = [x for x in xs if x is not None]
        if got:
            print(f"{name}: at fixed's conversions, {statistics.median(got):.1%} of the "
                  f"oracle's surplus (median of {len(got)} seeds; {min(got):.1%}-"
                  f"{max(got):.1%}); never reached on {len(xs) - len(got)} seeds")
    path = write("shading_frontier", {"machine": machine(), "events": args.events,
                                      "runs": {str(s): {n: {str(b): r for b, r in v.items()}
                                                        for n, v in d.items()}
                                               for s, d in runs.items()},
                                      "at_fixed_conversions": summary})
    print(f"-> {path}")


if __name__ == "__main__":
    main()

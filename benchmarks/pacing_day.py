"""A simulated day of traffic through the real decision core, ledger and pacing controller.

Traffic follows a diurnal curve (night at 35% of the daily mean, afternoon
peak at 165%). Every event offers each campaign one candidate with a model
score; the core decides, an auction against a log-normal competing price
decides the win, and the notice settles or releases the reservation at once.
The controller runs every `--tick-s` simulated seconds.

Pass 1 runs every campaign unthrottled ("asap") to measure the supply; pass 2
gives the "even" campaigns a budget of 1/3 of what they would spend
unthrottled ("enough supply") and checks spend against the even plan at every
hour: the target is within +-5% of plan at every hour and >= 98% of the budget
by the end of the day.

    python benchmarks/pacing_day.py [--tick-s 10] [--events-per-s 6] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write

from adbid import _decision
from adbid.money.ledger import SpendLedger
from adbid.money.pacing import DAY_S, PacingController
from adbid.stages import decision_reference as ref
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def campaigns(budgets: list[int], modes: list[str]) -> CampaignTable:
    vpa = [60_000, 90_000, 40_000, 120_000]
    return CampaignTable.from_records([
        {"campaign_id": f"c{i}", "value_per_action_micros": vpa[i], "budget_micros": b,
         "pacing": m} for i, (b, m) in enumerate(zip(budgets, modes))])


def traffic_rate(t_s: np.ndarray, mean_per_s: float) -> np.ndarray:
    phase = (t_s % DAY_S) / DAY_S
    return mean_per_s * (1.0 - 0.65 * np.cos(2 * np.pi * (phase - 0.08)))


def run_day(table: CampaignTable, tick_s: int, events_per_s: float, seed: int,
            trace: bool) -> dict:
    rng = np.random.default_rng(seed)
    c = len(table)
    ledger = SpendLedger(table, None, reservation_ttl_s=3600)
    pacing = np.ones(c)
    ctl = PacingController(table, ledger, pacing, now_s=DAY0)
    freq = _decision.FrequencyTable(1024)
    zeros_c = np.zeros(c + 1, np.int32)
    camp = dict(
        ad_campaign=np.arange(c, dtype=np.int32), camp_active=ledger.active,
        camp_value_per_action_micros=table.value_per_action_micros, camp_pacing=pacing,
        camp_country_mask=table.country_mask, camp_device_mask=table.device_mask,
        camp_size_mask=table.size_mask, camp_category_mask=table.category_mask,
        camp_advertiser_id=table.advertiser_id, camp_site_allow_ptr=zeros_c,
        camp_site_allow_ids=np.zeros(0, np.int32), camp_site_block_ptr=zeros_c,
        camp_site_block_ids=np.zeros(0, np.int32), camp_subcategory_ptr=table.subcategory_ptr,
        camp_subcategory_ids=table.subcategory_ids, camp_freq_cap=table.freq_cap,
        camp_freq_window_s=table.freq_window_s, camp_budget_micros=ledger.budget_micros,
        camp_spent_micros=ledger.spent_micros, camp_reserved_micros=ledger.reserved_micros,
        shading=0.85)
    hours, series = [], []
    n_ticks = DAY_S // tick_s
    rid = 0
    for tick in range(n_ticks + 1):
        now = DAY0 + tick * tick_s
        ctl.update(now)
        if tick % (3600 // tick_s) == 0:
            hours.append(ledger.spent_micros.tolist())
        if trace and tick % max(1, 300 // tick_s) == 0:
            series.append((tick * tick_s, ledger.spent_micros.tolist(),
                           ctl.planned_micros.tolist(), pacing.tolist()))
        if tick == n_ticks:
            break
        n = rng.poisson(traffic_rate(np.array([now - DAY0]), events_per_s)[0] * tick_s)
        if n == 0:
            continue
        first = (rng.random(n) < 0.6).astype(np.uint8)
        floor = (rng.integers(2, 20, n) * 100_000).astype(np.int64)
        args = ref.grouped({
            "cand_ad": np.tile(np.arange(c, dtype=np.int64), (n, 1)),
            "score": rng.beta(2, 30, (n, c)).astype(np.float32), "floor_micros": floor,
            "first_price": first, "country_id": np.zeros(n, np.int32),
            "device_id": np.ones(n, np.int32), "size_id": np.zeros(n, np.int32),
            "site_id": np.full(n, -1, np.int32), "blocked_category_mask": np.zeros(n, np.uint64),
            "blocked_adv_ptr": np.zeros(n + 1, np.int32), "blocked_adv_ids": np.zeros(0, np.int32),
            "blocked_sub_ptr": np.zeros(n + 1, np.int32), "blocked_sub_ids": np.zeros(0, np.int32),
            "user_key": rng.integers(0, 1 << 62, n).astype(np.uint64),
            "user_known": np.ones(n, np.uint8), "is_test": np.zeros(n, np.uint8), "now_s": now,
            **camp})
        _decision.decide_batch(**args, frequency=freq)
        o = args["out"]
        out = [o.candidate, o.price_cpm_micros, o.value_cpm_micros, o.reason]
        bid = np.flatnonzero(out[0] >= 0)
        if len(bid) == 0:
            continue
        ids = [f"r{rid + i}" for i in range(len(bid))]
        rid += len(bid)
        price = out[1][bid]
        ledger.record_bids(ids, out[0][bid].astype(np.int32), price,
                           np.zeros(len(bid), np.uint64), now_unix_ms=now * 1000)
        competing = rng.lognormal(np.log(2_500_000), 0.6, len(bid)).astype(np.int64)
        win = price >= competing
        clearing = np.where(first[bid] == 1, price, np.maximum(competing, floor[bid]))
        for r, w, p in zip(ids, win.tolist(), clearing.tolist()):
            ledger.apply(r, pb.OUTCOME_TYPE_WIN if w else pb.OUTCOME_TYPE_LOSS, p,
                         now_unix_ms=now * 1000)
    return {"hourly_spent": hours, "series": series, "late_wins": ledger.late_wins,
            "violations": ledger.violations()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tick-s", type=int, default=10, help="controller period, simulated seconds")
    ap.add_argument("--events-per-s", type=float, default=6.0, help="mean traffic")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    probe = run_day(campaigns([10**15] * 4, ["asap"] * 4), a.tick_s, a.events_per_s, a.seed, False)
    supply = probe["hourly_spent"][-1]
    modes = ["even", "even", "even", "asap"]
    budgets = [int(s / 3) if m == "even" else int(s * 0.8) for s, m in zip(supply, modes)]
    day = run_day(campaigns(budgets, modes), a.tick_s, a.events_per_s, a.seed + 1, True)
    spent = np.array(day["hourly_spent"], dtype=np.float64)  # [25, C]
    result = {"benchmark": "pacing over a simulated day", "machine": machine(),
              "tick_s": a.tick_s, "events_per_s": a.events_per_s, "seed": a.seed,
              "wall_s": round(time.perf_counter() - t0, 1), "campaigns": []}
    print(f"simulated day, controller every {a.tick_s} s, mean {a.events_per_s} events/s")
    ok = True
    for i, (mode, budget) in enumerate(zip(modes, budgets)):
        plan = budget * np.arange(25) / 24
        err = (spent[1:, i] - plan[1:]) / plan[1:]
        final = spent[-1, i] / budget
        row = {"campaign": f"c{i}", "mode": mode, "budget_micros": budget,
               "supply_micros": supply[i], "hourly_error": err.tolist(),
               "max_abs_hourly_error": float(np.abs(err).max()), "final_fraction": float(final)}
        result["campaigns"].append(row)
        if mode == "even":
            good = bool(row["max_abs_hourly_error"] <= 0.05 and final >= 0.98)
            ok &= good
            print(f"  c{i} even: budget {budget / 1e6:8.2f}, supply {supply[i] / 1e6:8.2f};"
                  f" worst hour {row['max_abs_hourly_error'] * 100:5.2f}% off plan"
                  f" (hour {int(np.abs(err).argmax()) + 1}), spent {final * 100:6.2f}% of budget"
                  f"  {'PASS' if good else 'FAIL'}")
        else:
            print(f"  c{i} asap: spent {final * 100:6.2f}% of budget by the end")
    result["pass"] = bool(ok)
    result["violations"] = day["violations"]
    series = day.pop("series")
    path = write("pacing_day", result)
    print(f"budget invariant violations: {day['violations'] or 'none'}; -> {path}")
    if not a.no_plot:
        plot(series, modes, budgets, RESULTS / "pacing_day.png")


def plot(series, modes, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s[0] for s in series]) / 3600
    spent = np.array([s[1] for s in series]) / 1e6
    planned = np.array([s[2] for s in series]) / 1e6
    mult = np.array([s[3] for s in series])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})
    for i, mode in enumerate(modes):
        if mode != "even":
            continue
        line, = ax.plot(t, spent[:, i], label=f"c{i} spent")
        ax.plot(t, planned[:, i], "--", color=line.get_color(), alpha=0.6, label=f"c{i} plan")
        ax2.plot(t, mult[:, i], color=line.get_color())
    ax.set_ylabel("cumulative spend (currency units)")
    ax.set_title("Even pacing over a simulated day: spend against plan")
    ax.legend(ncol=3, fontsize=8)
    ax2.set_ylabel("multiplier")
    ax2.set_xlabel("hour of day (UTC)")
    ax2.set_xticks(range(0, 25, 3))
    for a_ in (ax, ax2):
        a_.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()

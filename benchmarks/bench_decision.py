"""Decision core vs the pure-Python reference, per event and per candidate.

Batch of 256 events x K=16 candidates over the demo world's scale (3000 ads,
300 campaigns), budgets large enough that every eligible candidate competes.
Both run on the same inputs in the same process; the ratio is the figure.

    python benchmarks/bench_decision.py [--batch 256] [--k 16] [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, repeat, write

from adbid import _decision
from adbid.stages import decision_reference as ref
from adbid.world import targeting


def make_case(rng: np.random.Generator, batch: int, k: int, n_ads=3000, n_camps=300) -> dict:
    def masks(p):
        return np.where(rng.random(n_camps) < p, np.uint64(targeting.ALL_BITS),
                        rng.integers(1, 1 << 62, n_camps).astype(np.uint64)).astype(np.uint64)
    no_lists = np.zeros(n_camps + 1, np.int32)
    return dict(
        cand_ad=rng.integers(0, n_ads, (batch, k)).astype(np.int64),
        score=(rng.beta(1, 12, (batch, k))).astype(np.float32),
        floor_micros=(rng.integers(1, 40, batch) * 100_000).astype(np.int64),
        first_price=(rng.random(batch) < 0.7).astype(np.uint8),
        country_id=rng.integers(0, 30, batch).astype(np.int32),
        device_id=rng.integers(1, 5, batch).astype(np.int32),
        size_id=rng.integers(0, 10, batch).astype(np.int32),
        site_id=rng.integers(-1, 50, batch).astype(np.int32),
        blocked_category_mask=np.where(rng.random(batch) < 0.1, 1 << 24, 0).astype(np.uint64),
        blocked_adv_ptr=np.zeros(batch + 1, np.int32), blocked_adv_ids=np.zeros(0, np.int32),
        blocked_sub_ptr=np.zeros(batch + 1, np.int32), blocked_sub_ids=np.zeros(0, np.int32),
        user_key=rng.integers(0, 1 << 62, batch).astype(np.uint64),
        user_known=(rng.random(batch) < 0.9).astype(np.uint8),
        is_test=np.zeros(batch, np.uint8),
        ad_campaign=rng.integers(0, n_camps, n_ads).astype(np.int32),
        camp_active=(rng.random(n_camps) < 0.97).astype(np.uint8),
        camp_value_per_action_micros=(rng.integers(20, 400, n_camps) * 1000).astype(np.int64),
        camp_pacing=np.ones(n_camps),
        camp_country_mask=masks(0.65), camp_device_mask=masks(0.75), camp_size_mask=masks(0.75),
        camp_category_mask=(np.uint64(1) << rng.integers(0, 26, n_camps).astype(np.uint64)),
        camp_advertiser_id=(np.arange(n_camps) // 3).astype(np.int32),
        camp_site_allow_ptr=no_lists, camp_site_allow_ids=np.zeros(0, np.int32),
        camp_site_block_ptr=no_lists, camp_site_block_ids=np.zeros(0, np.int32),
        camp_subcategory_ptr=no_lists, camp_subcategory_ids=np.zeros(0, np.int32),
        camp_freq_cap=np.where(rng.random(n_camps) < 0.3, 5, 0).astype(np.int32),
        camp_freq_window_s=np.full(n_camps, 86_400, np.int64),
        camp_budget_micros=np.full(n_camps, 10**15, np.int64),
        camp_spent_micros=np.zeros(n_camps, np.int64),
        camp_reserved_micros=np.zeros(n_camps, np.int64),
        now_s=1_000_000,
        shading=0.85,
    )


def timer(impl, case: dict, calls: int):
    def once() -> float:
        freq = (_decision.FrequencyTable(1 << 16) if impl is _decision.decide_batch
                else ref.FrequencyDict())
        args = ref.grouped({**case, "camp_reserved_micros": case["camp_reserved_micros"].copy()})
        t0 = time.perf_counter()
        for _ in range(calls):
            impl(**args, frequency=freq)
        return (time.perf_counter() - t0) / calls

    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    case = make_case(np.random.default_rng(0), a.batch, a.k)
    cands = a.batch * a.k
    core = repeat(timer(_decision.decide_batch, case, 200), a.repeats)
    reference = repeat(timer(ref.reference_decide_batch, case, 1), max(3, a.repeats // 3))
    args = ref.grouped({**case, "camp_reserved_micros": case["camp_reserved_micros"].copy()})
    ref.reference_decide_batch(**args, frequency=ref.FrequencyDict())
    out = args["out"]
    outs = (out.candidate, out.price_cpm_micros, out.value_cpm_micros, out.reason)
    result = {
        "benchmark": "decision core vs pure-Python reference",
        "batch": a.batch, "k": a.k, "machine": machine(),
        "bid_rate": float((outs[0] >= 0).mean()),
        "core_s_per_batch": core, "reference_s_per_batch": reference,
        "core_ns_per_candidate": core["median"] / cands * 1e9,
        "core_ns_per_event": core["median"] / a.batch * 1e9,
        "reference_ns_per_event": reference["median"] / a.batch * 1e9,
        "speedup_median": reference["median"] / core["median"],
        "speedup_range": [reference["min"] / core["max"], reference["max"] / core["min"]],
    }
    path = write("decision", result)
    print(f"batch {a.batch} x K {a.k}, bid rate {result['bid_rate']:.2f}")
    print(f"core:      {core['median'] * 1e6:8.1f} us/batch (range {core['min'] * 1e6:.1f}"
          f"-{core['max'] * 1e6:.1f}), {result['core_ns_per_candidate']:.1f} ns/candidate, "
          f"{result['core_ns_per_event']:.0f} ns/event")
    print(f"reference: {reference['median'] * 1e6:8.1f} us/batch (range "
          f"{reference['min'] * 1e6:.1f}-{reference['max'] * 1e6:.1f}), "
          f"{result['reference_ns_per_event']:.0f} ns/event")
    print(f"speedup:   {result['speedup_median']:.0f}x (range {result['speedup_range'][0]:.0f}"
          f"-{result['speedup_range'][1]:.0f}x)  -> {path}")


if __name__ == "__main__":
    main()

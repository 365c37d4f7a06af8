"""The compiled decision core and the pure-Python reference agree exactly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from adbid import _decision
from adbid.money.units import impression_cost_micros
from adbid.stages import decision_reference as ref
from adbid.v1 import bidder_pb2 as pb
from adbid.world import targeting
from adbid.world.targeting import csr


def random_case(rng: np.random.Generator, n_events: int, k: int, n_ads: int = 40,
                n_camps: int = 8, budget_scale: int = 10_000) -> dict:
    """Arguments for decide_batch; small budgets so exhaustion happens mid-batch."""
    cand_ad = rng.integers(-1, n_ads, (n_events, k)).astype(np.int64)
    score = rng.random((n_events, k)).astype(np.float32)
    # Edge values: exact ties, zeros, NaN, > 1.
    if n_events and k >= 2:
        score[rng.random((n_events, k)) < 0.1] = 0.5
        score[rng.random((n_events, k)) < 0.02] = 0.0
        score[rng.random((n_events, k)) < 0.01] = np.nan
        score[rng.random((n_events, k)) < 0.01] = 1.5
    def mask():
        return np.array([targeting.ALL_BITS if rng.random() < 0.6 else
                         int(rng.integers(1, 1 << 62)) for _ in range(n_camps)], dtype=np.uint64)

    n_sites, n_advs = 6, 4
    site_lists = lambda p: [rng.integers(0, n_sites, rng.integers(1, 3)).tolist()  # noqa: E731
                            if rng.random() < p else [] for _ in range(n_camps)]
    allow_ptr, allow_ids = csr(site_lists(0.15))
    block_ptr, block_ids = csr(site_lists(0.2))
    badv_ptr, badv_ids = csr([rng.integers(0, n_advs, rng.integers(1, 3)).tolist()
                              if rng.random() < 0.15 else [] for _ in range(n_events)])
    n_subs = 5  # subcategory ids
    sub_lists = lambda n, p: [rng.integers(0, n_subs, rng.integers(1, 3)).tolist()  # noqa: E731
                              if rng.random() < p else [] for _ in range(n)]
    bsub_ptr, bsub_ids = csr(sub_lists(n_events, 0.1))
    csub_ptr, csub_ids = csr(sub_lists(n_camps, 0.3))
    n_users = 5
    return dict(
        cand_ad=cand_ad,
        score=score,
        floor_micros=(rng.integers(0, 30, n_events) * 100_000).astype(np.int64),
        first_price=rng.integers(0, 2, n_events).astype(np.uint8),
        country_id=rng.integers(0, 64, n_events).astype(np.int32),
        device_id=rng.integers(0, 5, n_events).astype(np.int32),
        size_id=rng.integers(0, 64, n_events).astype(np.int32),
        site_id=rng.integers(-1, n_sites, n_events).astype(np.int32),
        blocked_category_mask=np.where(rng.random(n_events) < 0.15,
                                       rng.integers(0, 1 << 26, n_events), 0).astype(np.uint64),
        blocked_adv_ptr=badv_ptr, blocked_adv_ids=badv_ids,
        blocked_sub_ptr=bsub_ptr, blocked_sub_ids=bsub_ids,
        # Few distinct users so that frequency caps bind within a batch.
        user_key=rng.integers(0, n_users, n_events).astype(np.uint64) * np.uint64(0x9E3779B1),
        user_known=(rng.random(n_events) < 0.85).astype(np.uint8),
        is_test=(rng.random(n_events) < 0.1).astype(np.uint8),
        ad_campaign=rng.integers(0, n_camps, n_ads).astype(np.int32),
        camp_active=(rng.random(n_camps) < 0.9).astype(np.uint8),
        camp_value_per_action_micros=rng.integers(0, 500_000, n_camps).astype(np.int64),
        camp_pacing=rng.choice([1.0, 0.5, 0.3333, 0.0], n_camps).astype(np.float64),
        camp_country_mask=mask(),
        camp_device_mask=mask(),
        camp_size_mask=mask(),
        camp_category_mask=np.where(rng.random(n_camps) < 0.5,
                                    np.uint64(1) << rng.integers(0, 26, n_camps).astype(np.uint64),
                                    np.uint64(0)).astype(np.uint64),
        camp_advertiser_id=rng.integers(-1, n_advs, n_camps).astype(np.int32),
        camp_site_allow_ptr=allow_ptr, camp_site_allow_ids=allow_ids,
        camp_site_block_ptr=block_ptr, camp_site_block_ids=block_ids,
        camp_subcategory_ptr=csub_ptr, camp_subcategory_ids=csub_ids,
        camp_freq_cap=np.where(rng.random(n_camps) < 0.4, rng.integers(1, 4, n_camps),
                               0).astype(np.int32),
        camp_freq_window_s=rng.choice([10, 3600], n_camps).astype(np.int64),
        camp_budget_micros=rng.integers(0, budget_scale, n_camps).astype(np.int64),
        camp_spent_micros=rng.integers(0, budget_scale // 4 + 1, n_camps).astype(np.int64),
        camp_reserved_micros=rng.integers(0, budget_scale // 4 + 1, n_camps).astype(np.int64),
        now_s=int(rng.integers(1_000, 1_020)),
        shading=float(rng.choice([1.0, 0.85, 0.5])),
    )


def run_both(case: dict, tables=None) -> tuple[tuple, tuple]:
    """Run the core and the reference on copies; returns (error, outputs..., reserved) of each.

    `tables`: (FrequencyTable, FrequencyDict) carried across calls; fresh ones by default.
    """
    core_freq, ref_freq = tables or (_decision.FrequencyTable(1 << 12), ref.FrequencyDict())
    results = []
    for impl, freq in ((_decision.decide_batch, core_freq),
                       (ref.reference_decide_batch, ref_freq)):
        args = ref.grouped({k: (v.copy() if isinstance(v, np.ndarray) else v)
                            for k, v in case.items()})
        err = impl(**args, frequency=freq)
        out = args["out"]
        results.append((err, out.candidate, out.price_cpm_micros, out.value_cpm_micros,
                        out.reason, args["books"].reserved_micros))
    assert core_freq.evictions == 0
    n_camps = len(case["camp_active"])
    for user in set(case["user_key"].tolist()):
        for c in range(n_camps):
            w = int(case["camp_freq_window_s"][c])
            assert core_freq.count(user, c, case["now_s"], w) == \
                ref_freq.count(user, c, case["now_s"], w), "frequency counts differ"
    return results[0], results[1]


def assert_same(a: tuple, b: tuple) -> None:
    names = ("error", "k", "price", "value", "reason", "reserved")
    for name, x, y in zip(names, a, b):
        np.testing.assert_array_equal(x, y, err_msg=f"core and reference differ in {name}")


def check_invariants(case: dict, out: tuple) -> None:
    _, k, price, value, reason, reserved = out
    bid = k >= 0
    assert np.all(price[bid] >= case["floor_micros"][bid]), "a bid below its floor"
    assert np.all(price[bid] <= value[bid]), "a bid above its value"
    assert np.all(price[bid] > 0)
    assert np.all(reason[bid] == 0) and np.all(reason[~bid] > 0)
    live = (reserved - case["camp_reserved_micros"])
    assert np.all(live >= 0)
    total = case["camp_spent_micros"] + reserved
    was_ok = case["camp_spent_micros"] + case["camp_reserved_micros"] <= case["camp_budget_micros"]
    assert np.all(total[was_ok] <= case["camp_budget_micros"][was_ok]), "budget overspent"


def test_the_core_s_reason_codes_are_generated_from_the_protocol():
    """ext/decision_reasons.pxd is written by the build from bidder.proto's NoBidReason."""
    pxd = Path(__file__).resolve().parent.parent / "ext" / "decision_reasons.pxd"
    generated = dict(re.findall(r"REASON_(\w+) = (\d+)", pxd.read_text()))
    assert {f"NO_BID_REASON_{k}": int(v) for k, v in generated.items()} == \
        dict(pb.NoBidReason.items())


def test_core_matches_reference_on_thousands_of_random_batches():
    rng = np.random.default_rng(12345)
    bids = 0
    for _ in range(3000):
        case = random_case(rng, int(rng.integers(0, 24)), int(rng.integers(1, 9)))
        core, reference = run_both(case)
        assert_same(core, reference)
        check_invariants(case, core)
        bids += int((core[1] >= 0).sum())
    assert bids > 1000  # the cases do exercise bidding, not only no-bids


def test_core_matches_reference_with_a_shading_factor_per_event():
    """A shading policy's factors, one per event, instead of the constant."""
    rng = np.random.default_rng(777)
    shaded = 0
    for _ in range(500):
        case = random_case(rng, int(rng.integers(1, 24)), int(rng.integers(1, 9)))
        case["event_shading"] = rng.uniform(0.3, 1.0, len(case["cand_ad"]))
        core, reference = run_both(case)
        assert_same(core, reference)
        check_invariants(case, core)
        bid = (core[1] >= 0) & (case["first_price"] == 1)
        shaded += int((core[2][bid] < core[3][bid]).sum())
    assert shaded > 100
    case = random_case(np.random.default_rng(1), 8, 4)
    case["event_shading"] = np.ones(3)
    with pytest.raises(ValueError, match="one factor per event"):
        run_both(case)


@pytest.mark.parametrize("n_events,k", [(0, 4), (1, 1), (1, 16), (256, 16)])
def test_core_matches_reference_on_batch_shapes(n_events, k):
    case = random_case(np.random.default_rng(n_events * 31 + k), n_events, k,
                       budget_scale=10_000_000)
    core, reference = run_both(case)
    assert_same(core, reference)
    check_invariants(case, core)


def simple_case(n_events=3, k=3) -> dict:
    """Every candidate eligible, big budgets, second price, floor 0."""
    return dict(
        cand_ad=np.tile(np.arange(k, dtype=np.int64), (n_events, 1)),
        score=np.full((n_events, k), 0.25, dtype=np.float32),  # exact in float32
        floor_micros=np.zeros(n_events, np.int64),
        first_price=np.zeros(n_events, np.uint8),
        country_id=np.zeros(n_events, np.int32), device_id=np.ones(n_events, np.int32),
        size_id=np.zeros(n_events, np.int32), site_id=np.full(n_events, -1, np.int32),
        blocked_category_mask=np.zeros(n_events, np.uint64),
        blocked_adv_ptr=np.zeros(n_events + 1, np.int32), blocked_adv_ids=np.zeros(0, np.int32),
        blocked_sub_ptr=np.zeros(n_events + 1, np.int32), blocked_sub_ids=np.zeros(0, np.int32),
        user_key=np.arange(n_events, dtype=np.uint64) + np.uint64(7),
        user_known=np.ones(n_events, np.uint8), is_test=np.zeros(n_events, np.uint8),
        ad_campaign=np.arange(k, dtype=np.int32),
        camp_active=np.ones(k, np.uint8),
        camp_value_per_action_micros=np.full(k, 4_000, np.int64),
        camp_pacing=np.ones(k, np.float64),
        camp_country_mask=np.full(k, targeting.ALL_BITS, np.uint64),
        camp_device_mask=np.full(k, targeting.ALL_BITS, np.uint64),
        camp_size_mask=np.full(k, targeting.ALL_BITS, np.uint64),
        camp_category_mask=np.zeros(k, np.uint64),
        camp_advertiser_id=np.arange(k, dtype=np.int32),
        camp_site_allow_ptr=np.zeros(k + 1, np.int32), camp_site_allow_ids=np.zeros(0, np.int32),
        camp_site_block_ptr=np.zeros(k + 1, np.int32), camp_site_block_ids=np.zeros(0, np.int32),
        camp_subcategory_ptr=np.zeros(k + 1, np.int32),
        camp_subcategory_ids=np.zeros(0, np.int32),
        camp_freq_cap=np.zeros(k, np.int32), camp_freq_window_s=np.full(k, 86_400, np.int64),
        camp_budget_micros=np.full(k, 10**12, np.int64),
        camp_spent_micros=np.zeros(k, np.int64),
        camp_reserved_micros=np.zeros(k, np.int64),
        now_s=1_000_000,
        shading=0.8,
    )


def decide(case):
    """The core's outputs (after checking them against the reference), with every no-bid's
    candidate as -1 (the facade's form: -2 - k names the best rejected column)."""
    core, reference = run_both(case)
    assert_same(core, reference)
    return (core[0], np.maximum(core[1], -1), *core[2:])


def test_a_no_bid_names_its_best_rejected_candidate():
    case = simple_case(3, 3)
    case["score"][:] = np.array([0.1, 0.3, 0.2], np.float32)
    case["floor_micros"][:] = [0, 5_000_000, 0]
    case["camp_active"][:] = 1
    case["score"][2] = 0.0  # nothing worth anything: no candidate to name
    core, reference = run_both(case)
    assert_same(core, reference)
    assert core[1].tolist() == [1, -2 - 1, -1]
    assert core[3].tolist()[1] == 1_200_000 and core[3].tolist()[2] == 0


def test_ties_pick_the_first_candidate():
    _, k, _, value, _, _ = decide(simple_case())
    assert k.tolist() == [0, 0, 0]
    assert value.tolist() == [1_000_000] * 3  # 1000 x 0.25 x 4_000 micros = $1 CPM


def test_all_candidates_filtered_reports_the_best_rejected_reason():
    case = simple_case(1, 3)
    case["camp_active"][:] = [0, 1, 1]
    case["camp_country_mask"][1:] = np.uint64(0b10)  # event country bit 0 not allowed
    case["score"][0] = [0.5, 0.25, 0.25]
    _, k, _, _, reason, _ = decide(case)
    assert k[0] == -1 and reason[0] == pb.NO_BID_REASON_CAMPAIGN_INACTIVE
    case["score"][0] = [0.25, 0.75, 0.25]
    _, k, _, _, reason, _ = decide(case)
    assert reason[0] == pb.NO_BID_REASON_TARGETING


def test_floor_above_every_value_is_no_bid_below_floor():
    case = simple_case()
    case["floor_micros"][:] = 1_000_001
    _, k, price, _, reason, reserved = decide(case)
    assert (k == -1).all() and (reason == pb.NO_BID_REASON_BELOW_FLOOR).all()
    assert (price == 0).all() and (reserved == 0).all()


def test_first_price_shades_but_never_below_the_floor():
    case = simple_case(2, 1)
    case["first_price"][:] = 1
    case["floor_micros"][:] = [0, 900_000]
    _, _, price, value, _, _ = decide(case)
    assert price.tolist() == [800_000, 900_000] and value.tolist() == [1_000_000] * 2


def test_budget_exhausted_mid_batch_stops_bidding_for_that_campaign():
    case = simple_case(5, 1)
    case["camp_budget_micros"][:] = 3 * impression_cost_micros(1_000_000)  # three impressions
    _, k, _, _, reason, reserved = decide(case)
    assert k.tolist() == [0, 0, 0, -1, -1]
    assert reason[3:].tolist() == [pb.NO_BID_REASON_BUDGET_EXHAUSTED] * 2
    assert reserved[0] == case["camp_budget_micros"][0]


def test_test_traffic_reserves_nothing_and_respects_budgets():
    case = simple_case(4, 2)
    case["is_test"][:] = 1
    _, k, _, _, _, reserved = decide(case)
    assert (k == 0).all() and (reserved == 0).all()
    case["camp_budget_micros"][:] = 0  # exhausted: test traffic sees what live traffic would
    _, k, _, _, reason, reserved = decide(case)
    assert (k == -1).all() and (reason == pb.NO_BID_REASON_BUDGET_EXHAUSTED).all()


def test_missing_candidates_are_skipped():
    case = simple_case(2, 3)
    case["cand_ad"][0] = -1
    case["cand_ad"][1] = [-1, -1, 2]
    _, k, _, _, reason, _ = decide(case)
    assert k.tolist() == [-1, 2] and reason[0] == pb.NO_BID_REASON_NO_CANDIDATES


def test_bad_campaign_row_is_reported_as_an_error_code():
    case = simple_case(1, 1)
    case["ad_campaign"][0] = 99
    core, reference = run_both(case)
    assert core[0] == reference[0] == 1


def test_core_matches_reference_across_a_sequence_of_batches_sharing_frequency_state():
    rng = np.random.default_rng(99)
    tables = (_decision.FrequencyTable(1 << 12), ref.FrequencyDict())
    capped = 0
    for step in range(300):
        case = random_case(rng, int(rng.integers(1, 16)), int(rng.integers(1, 6)),
                           budget_scale=10_000_000)
        case["now_s"] = 1_000 + step  # windows of 10 s expire along the way
        core, reference = run_both(case, tables)
        assert_same(core, reference)
        capped += int((core[4] == pb.NO_BID_REASON_FREQUENCY_CAP).sum())
    assert capped > 50


def test_frequency_cap_binds_per_user_and_campaign_and_its_window_expires():
    case = simple_case(4, 1)
    case["camp_freq_cap"][:] = 2
    case["camp_freq_window_s"][:] = 100
    case["user_key"][:] = 42  # the same user four times
    tables = (_decision.FrequencyTable(64), ref.FrequencyDict())
    _, k, _, _, reason, _ = run_both(case, tables)[0]
    assert k.tolist() == [0, 0, -2, -2]  # no bid; column 0 was the best rejected
    assert reason[2:].tolist() == [pb.NO_BID_REASON_FREQUENCY_CAP] * 2
    case["now_s"] += 99
    assert (run_both(case, tables)[0][1] < 0).all()  # still inside the window
    case["now_s"] += 1
    assert run_both(case, tables)[0][1].tolist() == [0, 0, -2, -2]  # a new window


def test_users_without_a_usable_id_never_pass_a_frequency_capped_campaign():
    case = simple_case(2, 2)
    case["camp_freq_cap"][:] = [5, 0]
    case["user_known"][:] = 0
    case["score"][:] = [0.5, 0.25]  # the capped campaign is worth more
    _, k, _, _, _, _ = decide(case)
    assert k.tolist() == [1, 1]


def test_lost_auctions_give_their_frequency_count_back():
    t = _decision.FrequencyTable(64)
    t.add(7, 3, 1000, 60)
    t.add(7, 3, 1001, 60)
    t.add(7, 3, 1002, 60, -1)
    assert t.count(7, 3, 1003, 60) == 1 and t.count(8, 3, 1003, 60) == 0
    t.add(7, 3, 2000, 60, -1)  # window over: nothing to give back
    assert t.count(7, 3, 2000, 60) == 0


def test_site_allow_and_block_lists_and_publisher_blocks():
    case = simple_case(4, 1)
    case["camp_site_allow_ptr"] = np.array([0, 2], np.int32)
    case["camp_site_allow_ids"] = np.array([3, 4], np.int32)
    case["camp_site_block_ptr"] = np.array([0, 1], np.int32)
    case["camp_site_block_ids"] = np.array([4], np.int32)
    case["camp_category_mask"][:] = np.uint64(1 << 6)  # IAB7
    case["site_id"][:] = [3, 5, 4, 3]
    case["blocked_category_mask"][3] = np.uint64(1 << 6)
    _, k, _, _, reason, _ = decide(case)
    assert k.tolist() == [0, -1, -1, -1]
    assert reason[1:].tolist() == [pb.NO_BID_REASON_TARGETING, pb.NO_BID_REASON_BLOCKED,
                                   pb.NO_BID_REASON_BLOCKED]
    case = simple_case(2, 1)
    case["camp_advertiser_id"][:] = 2
    case["blocked_adv_ptr"] = np.array([0, 2, 3], np.int32)
    case["blocked_adv_ids"] = np.array([1, 2, 5], np.int32)
    _, k, _, _, reason, _ = decide(case)
    assert k.tolist() == [-1, 0] and reason[0] == pb.NO_BID_REASON_BLOCKED


def test_test_traffic_counts_no_frequency():
    case = simple_case(3, 1)
    case["camp_freq_cap"][:] = 1
    case["user_key"][:] = 5
    case["is_test"][:] = 1
    tables = (_decision.FrequencyTable(64), ref.FrequencyDict())
    assert run_both(case, tables)[0][1].tolist() == [0, 0, 0]
    assert tables[0].count(5, 0, case["now_s"], 86_400) == 0


def test_a_full_frequency_table_evicts_and_counts_it():
    t = _decision.FrequencyTable(32)
    for user in range(100):
        t.add(user, 0, 1000 + user, 3600)
    assert t.evictions > 0 and t.capacity == 32


def test_the_reference_reads_the_same_reasons_from_the_proto_as_from_the_stubs():
    """Where the stubs cannot load (an older protobuf runtime: the Triton peer's venv), the
    reference reads NoBidReason from the .proto; both must give the same numbers."""
    from adbid.stages import decision_reference as ref
    from adbid.v1 import bidder_pb2 as pb

    assert ref.reasons_from_proto() == dict(pb.NoBidReason.items()) == ref.reason_numbers()

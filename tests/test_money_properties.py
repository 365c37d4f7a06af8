"""Property-based: random campaigns, batches and notice sequences through the core and the
reference, each with its own ledger and frequency state; the books stay identical."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_decision_parity import random_case

from adbid import _decision
from adbid.money.ledger import SpendLedger
from adbid.stages import decision_reference as ref
from adbid.v1 import bidder_pb2 as pb
from adbid.world.campaigns import CampaignTable

CAMPAIGN_KEYS = [k for k in random_case(np.random.default_rng(0), 1, 1) if k.startswith("camp_")
                 or k == "ad_campaign"]


class Books:
    """One implementation with its own ledger and frequency state."""

    def __init__(self, impl, freq, case: dict) -> None:
        n = len(case["camp_active"])
        table = CampaignTable.from_records([
            {"campaign_id": f"c{i}", "value_per_action_micros": 1,
             "budget_micros": int(case["camp_budget_micros"][i])} for i in range(n)])
        self.ledger = SpendLedger(table, None, reservation_ttl_s=30)
        self.ledger.spent_micros[:] = case["camp_spent_micros"]
        self.impl, self.freq = impl, freq
        self.campaign = {k: case[k].copy() for k in CAMPAIGN_KEYS
                         if k not in ("camp_budget_micros", "camp_spent_micros",
                                      "camp_reserved_micros")}
        self.campaign["ad_campaign"] = case["ad_campaign"]

    def bid(self, events: dict, now_s: int, shading: float, ids: list[str]):
        led = self.ledger
        args = ref.grouped({**events, **self.campaign, "camp_budget_micros": led.budget_micros,
                            "camp_spent_micros": led.spent_micros,
                            "camp_reserved_micros": led.reserved_micros, "now_s": now_s,
                            "shading": shading})
        out = args["out"]
        err = self.impl(**args, frequency=self.freq)
        outs = (out.candidate, out.price_cpm_micros, out.value_cpm_micros, out.reason)
        live = np.flatnonzero((outs[0] >= 0) & (events["is_test"] == 0))
        if len(live):
            rows = self.campaign["ad_campaign"][events["cand_ad"][live, outs[0][live]]]
            led.record_bids([ids[i] for i in live], rows, outs[1][live],
                            events["user_key"][live], now_unix_ms=now_s * 1000)
        return err, *outs

    def notice(self, rid: str, outcome: int, clearing: int, now_s: int):
        r = self.ledger.apply(rid, outcome, clearing, now_unix_ms=now_s * 1000)
        if r.released is not None:
            row = r.released.campaign_row
            if self.campaign["camp_freq_cap"][row] > 0:
                self.freq.add(r.released.user_key & (2**64 - 1), row, now_s,
                              int(self.campaign["camp_freq_window_s"][row]), -1)
        return r.accepted, r.duplicate, r.error

    def state(self):
        led = self.ledger
        return (led.spent_micros.tolist(), led.reserved_micros.tolist(), sorted(led.open),
                led.late_wins)


step = st.one_of(
    st.tuples(st.just("batch"), st.integers(0, 2**31), st.integers(0, 24), st.integers(1, 6)),
    st.tuples(st.just("notices"), st.integers(0, 2**31), st.integers(1, 10), st.just(0)),
    st.tuples(st.just("time"), st.integers(1, 40), st.just(0), st.just(0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_camps=st.integers(1, 6),
       budget_scale=st.sampled_from([3_000, 3_000_000, 30_000_000, 10**12]),
       steps=st.lists(step, min_size=1, max_size=20))
def test_core_and_reference_keep_identical_books(seed, n_camps, budget_scale, steps):
    rng = np.random.default_rng(seed)
    base = random_case(rng, 1, 1, n_ads=12, n_camps=n_camps, budget_scale=budget_scale)
    base["camp_spent_micros"] = np.minimum(base["camp_spent_micros"], base["camp_budget_micros"])
    core = Books(_decision.decide_batch, _decision.FrequencyTable(1 << 10), base)
    reference = Books(ref.reference_decide_batch, ref.FrequencyDict(), base)
    now_s, n_ids, bid_ids = 1_000, 0, []
    for kind, a, b, c in [("batch", seed, 16, 4), *steps]:
        if kind == "batch":
            r = np.random.default_rng(a)
            case = random_case(r, b, c, n_ads=12, n_camps=n_camps)
            events = {k: v for k, v in case.items()
                      if k not in CAMPAIGN_KEYS and k not in ("now_s", "shading")}
            ids = [f"r{n_ids + i}" for i in range(b)]
            n_ids += b
            out_core = core.bid(events, now_s, case["shading"], ids)
            out_ref = reference.bid(events, now_s, case["shading"], ids)
            for x, y in zip(out_core, out_ref):
                np.testing.assert_array_equal(x, y)
            bid_ids += [ids[i] for i in np.flatnonzero(out_core[1] >= 0)]
        elif kind == "notices":
            r = np.random.default_rng(a)
            for _ in range(b):
                rid = (bid_ids[r.integers(len(bid_ids))] if bid_ids and r.random() < 0.9
                       else "unknown-id")
                outcome = int(r.choice([pb.OUTCOME_TYPE_WIN, pb.OUTCOME_TYPE_LOSS,
                                        pb.OUTCOME_TYPE_BILLING, 0]))
                clearing = int(r.integers(0, 3_000_000))
                assert core.notice(rid, outcome, clearing, now_s) == \
                    reference.notice(rid, outcome, clearing, now_s)
        else:
            now_s += a
            assert len(core.ledger.expire(now_s * 1000)) == len(reference.ledger.expire(
                now_s * 1000))
        assert core.state() == reference.state()
        # Only a win booked after its reservation expired may break the invariant.
        assert core.ledger.violations() == [] or core.ledger.late_wins > 0
    assert core.freq.evictions == 0
    event(f"bids: {'none' if not bid_ids else 'some' if len(bid_ids) < 10 else 'many'}")
    settled = any(core.ledger.spent_micros > base["camp_spent_micros"])
    event(f"settled: {'yes' if settled else 'no'}")

"""Pure-Python reference of the decision core (ext/decision.pyx).

Same arguments, same rules, same arithmetic order. The parity tests run both on
random and edge-case batches and require identical outputs, budget
reservations and frequency counts. Change both together.

`grouped` turns one flat dict of arrays (the form tests and benchmarks draw) into
the groups both take: events, campaigns, books and outputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from adbid.money.units import impression_cost_micros

PROTO = Path(__file__).resolve().parents[2] / "proto" / "adbid" / "v1" / "bidder.proto"


def reason_numbers() -> dict[str, int]:
    """NoBidReason's values by name: from the generated stubs, or, where the protobuf
    runtime is older than the stubs (the Triton peer's venv, benchmarks/peers), read
    from the .proto in the source tree."""
    try:
        from adbid.v1 import bidder_pb2 as pb
        return dict(pb.NoBidReason.items())
    except Exception:  # protobuf's VersionError, or no stubs at all
        return reasons_from_proto()


def reasons_from_proto() -> dict[str, int]:
    return {name: int(number) for name, number in
            re.findall(r"\b(NO_BID_REASON_[A-Z_]+)\s*=\s*(\d+)\s*;", PROTO.read_text())}


_R = reason_numbers()
REASON_NONE = _R["NO_BID_REASON_UNSPECIFIED"]
REASON_NO_CANDIDATES = _R["NO_BID_REASON_NO_CANDIDATES"]
REASON_CAMPAIGN_INACTIVE = _R["NO_BID_REASON_CAMPAIGN_INACTIVE"]
REASON_TARGETING = _R["NO_BID_REASON_TARGETING"]
REASON_FREQUENCY_CAP = _R["NO_BID_REASON_FREQUENCY_CAP"]
REASON_BELOW_FLOOR = _R["NO_BID_REASON_BELOW_FLOOR"]
REASON_BUDGET_EXHAUSTED = _R["NO_BID_REASON_BUDGET_EXHAUSTED"]
REASON_BLOCKED = _R["NO_BID_REASON_BLOCKED"]
MAX_VALUE_MICROS = 9.0e18
_M64 = (1 << 64) - 1


def value_micros(score: float, value_per_action_micros: int, pacing: float) -> int:
    """1000 x P x value per action x pacing, truncated; NaN/negative P -> 0, P > 1 -> 1."""
    p = float(score)
    if not p > 0.0:
        return 0
    p = min(p, 1.0)
    v = 1000.0 * p * float(value_per_action_micros) * float(pacing)
    if not v > 0.0:
        return 0
    return int(min(v, MAX_VALUE_MICROS))


def freq_key(user_key: int, campaign: int) -> int:
    """splitmix64 of (user, campaign), never 0; as in ext/decision.pyx."""
    z = (int(user_key) ^ ((int(campaign) + 1) * 0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) | 1


class FrequencyDict:
    """The frequency table's rules on a dict (no capacity limit, so never evicts)."""

    def __init__(self) -> None:
        self.slots: dict[int, list[int]] = {}  # key -> [window_start_s, count]

    def count(self, user_key: int, campaign: int, now_s: int, window_s: int) -> int:
        s = self.slots.get(freq_key(user_key, campaign))
        if s is None or now_s - s[0] >= window_s:
            return 0
        return s[1]

    def add(self, user_key: int, campaign: int, now_s: int, window_s: int, delta: int = 1) -> None:
        key = freq_key(user_key, campaign)
        s = self.slots.get(key)
        if s is None:
            if delta <= 0:
                return
            s = self.slots[key] = [0, 0]
        if now_s - s[0] >= window_s:
            if delta < 0:
                return
            s[0], s[1] = now_s, 0
        s[1] = max(s[1] + delta, 0)


def _bit_set(mask: int, bit: int) -> bool:
    return 0 <= bit < 64 and (int(mask) >> int(bit)) & 1 == 1


def reference_decide_batch(cand_ad, score, events, campaigns, ad_campaign, pacing, books,
                           frequency, now_s, shading, out, event_shading=None) -> int:
    """See adbid/_decision.pyi for the groups, shapes and dtypes."""
    e, c_, b_ = events, campaigns, books
    floor_micros, first_price, country_id, device_id, size_id, site_id = (
        e.floor_micros, e.first_price, e.country_bit, e.device_bit, e.size_bit, e.site_id)
    blocked_category_mask, blocked_adv_ptr, blocked_adv_ids = (
        e.blocked_category_mask, e.blocked_adv_ptr, e.blocked_adv_ids)
    blocked_sub_ptr, blocked_sub_ids = e.blocked_subcategory_ptr, e.blocked_subcategory_ids
    camp_sub_ptr, camp_sub_ids = c_.subcategory_ptr, c_.subcategory_ids
    user_key, user_known, is_test = e.user_key, e.user_known, e.is_test
    camp_value_per_action_micros, camp_pacing = c_.value_per_action_micros, pacing
    camp_country_mask, camp_device_mask, camp_size_mask, camp_category_mask = (
        c_.country_mask, c_.device_mask, c_.size_mask, c_.category_mask)
    camp_advertiser_id, camp_freq_cap, camp_freq_window_s = (
        c_.advertiser_id, c_.freq_cap, c_.freq_window_s)
    camp_site_allow_ptr, camp_site_allow_ids, camp_site_block_ptr, camp_site_block_ids = (
        c_.site_allow_ptr, c_.site_allow_ids, c_.site_block_ptr, c_.site_block_ids)
    camp_active, camp_budget_micros, camp_spent_micros, camp_reserved_micros = (
        b_.active, b_.budget_micros, b_.spent_micros, b_.reserved_micros)
    out_k, out_price_micros, out_value_micros, out_reason = (
        out.candidate, out.price_cpm_micros, out.value_cpm_micros, out.reason)
    freq = frequency
    n_ads, n_camps = len(ad_campaign), len(camp_active)
    error = 0
    for i in range(cand_ad.shape[0]):
        best = None  # (value, price, k, campaign)
        rejected_value, rejected_reason, rejected_k = -1, REASON_NO_CANDIDATES, -1
        floor = int(floor_micros[i])
        site = int(site_id[i])
        start, stop = blocked_adv_ptr[i], blocked_adv_ptr[i + 1]
        blocked_advertisers = set(blocked_adv_ids[start:stop].tolist())
        blocked_subs = set(blocked_sub_ids[blocked_sub_ptr[i]:blocked_sub_ptr[i + 1]].tolist())
        for k in range(cand_ad.shape[1]):
            ad = int(cand_ad[i, k])
            if ad < 0 or ad >= n_ads:
                continue
            c = int(ad_campaign[ad])
            if c < 0 or c >= n_camps:
                error = 1
                continue
            value = value_micros(score[i, k], camp_value_per_action_micros[c], camp_pacing[c])
            allow = camp_site_allow_ids[camp_site_allow_ptr[c]:camp_site_allow_ptr[c + 1]].tolist()
            block = camp_site_block_ids[camp_site_block_ptr[c]:camp_site_block_ptr[c + 1]].tolist()
            cap = int(camp_freq_cap[c])
            price = 0
            if not camp_active[c]:
                reason = REASON_CAMPAIGN_INACTIVE
            elif not (_bit_set(camp_country_mask[c], country_id[i])
                      and _bit_set(camp_device_mask[c], device_id[i])
                      and _bit_set(camp_size_mask[c], size_id[i])) or (allow and site not in allow):
                reason = REASON_TARGETING
            elif (int(camp_category_mask[c]) & int(blocked_category_mask[i]) or site in block
                  or blocked_subs.intersection(
                      camp_sub_ids[camp_sub_ptr[c]:camp_sub_ptr[c + 1]].tolist())
                  or int(camp_advertiser_id[c]) in blocked_advertisers):
                reason = REASON_BLOCKED
            elif cap > 0 and (not user_known[i] or freq.count(
                    int(user_key[i]), c, int(now_s), int(camp_freq_window_s[c])) >= cap):
                reason = REASON_FREQUENCY_CAP
            elif value <= 0 or value < floor:
                reason = REASON_BELOW_FLOOR
            else:
                reason = REASON_NONE
                price = value
                if first_price[i]:
                    factor = shading if event_shading is None else event_shading[i]
                    price = max(int(float(value) * float(factor)), floor)
                if price <= 0:
                    reason = REASON_BELOW_FLOOR
                else:
                    available = (int(camp_budget_micros[c]) - int(camp_spent_micros[c])
                                 - int(camp_reserved_micros[c]))
                    if impression_cost_micros(price) > available:
                        reason = REASON_BUDGET_EXHAUSTED
            if reason == REASON_NONE:
                if best is None or value > best[0]:
                    best = (value, price, k, c)
            elif value > rejected_value:
                rejected_value, rejected_reason, rejected_k = value, reason, k
        if best is not None:
            value, price, k, c = best
            if not is_test[i]:
                camp_reserved_micros[c] += impression_cost_micros(price)
                if camp_freq_cap[c] > 0:
                    freq.add(int(user_key[i]), c, int(now_s), int(camp_freq_window_s[c]), 1)
            out_k[i], out_price_micros[i], out_value_micros[i], out_reason[i] = k, price, value, 0
        else:
            out_k[i] = -2 - rejected_k if rejected_value > 0 else -1
            out_price_micros[i] = 0
            out_value_micros[i] = max(rejected_value, 0)
            out_reason[i] = rejected_reason
    return error


EVENT_COLUMNS = {"floor_micros": "floor_micros", "first_price": "first_price",
                 "country_id": "country_bit", "device_id": "device_bit", "size_id": "size_bit",
                 "site_id": "site_id", "blocked_category_mask": "blocked_category_mask",
                 "blocked_adv_ptr": "blocked_adv_ptr", "blocked_adv_ids": "blocked_adv_ids",
                 "blocked_sub_ptr": "blocked_subcategory_ptr",
                 "blocked_sub_ids": "blocked_subcategory_ids",
                 "user_key": "user_key", "user_known": "user_known", "is_test": "is_test"}
BOOK_COLUMNS = {"camp_active": "active", "camp_budget_micros": "budget_micros",
                "camp_spent_micros": "spent_micros", "camp_reserved_micros": "reserved_micros"}


def grouped(flat: dict) -> dict:
    """A flat dict of decide_batch inputs (`country_id`, `camp_budget_micros`, ...; cand_ad,
    score, ad_campaign, camp_pacing, now_s, shading) -> the grouped keyword arguments, with
    fresh outputs under `out`. `books.reserved_micros` is the flat dict's array itself."""
    n = len(flat["cand_ad"])
    campaigns = {k[5:]: v for k, v in flat.items()
                 if k.startswith("camp_") and k not in BOOK_COLUMNS and k != "camp_pacing"}
    return dict(
        cand_ad=flat["cand_ad"], score=flat["score"],
        events=SimpleNamespace(**{attr: flat[k] for k, attr in EVENT_COLUMNS.items()}),
        campaigns=SimpleNamespace(**campaigns), ad_campaign=flat["ad_campaign"],
        pacing=flat["camp_pacing"],
        books=SimpleNamespace(**{attr: flat[k] for k, attr in BOOK_COLUMNS.items()}),
        now_s=flat["now_s"], shading=flat["shading"],
        out=grouped_outputs(n), **({"event_shading": flat["event_shading"]}
                                   if flat.get("event_shading") is not None else {}))


def grouped_outputs(n_events: int) -> SimpleNamespace:
    """Fresh outputs for n events: candidate int32, price_cpm_micros int64,
    value_cpm_micros int64, reason int32, each [B]."""
    return SimpleNamespace(candidate=np.empty(n_events, np.int32),
                           price_cpm_micros=np.empty(n_events, np.int64),
                           value_cpm_micros=np.empty(n_events, np.int64),
                           reason=np.empty(n_events, np.int32))

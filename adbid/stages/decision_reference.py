"""Pure-Python reference of the decision core (ext/decision.pyx).

Same signature, same rules, same arithmetic order. The parity tests run both on
random and edge-case batches and require identical outputs, budget
reservations and frequency counts. Change both together.
"""

from __future__ import annotations

import numpy as np

from adbid.money.units import impression_cost_micros

REASON_NONE = 0
REASON_NO_CANDIDATES = 1
REASON_CAMPAIGN_INACTIVE = 2
REASON_TARGETING = 3
REASON_FREQUENCY_CAP = 4
REASON_BELOW_FLOOR = 5
REASON_BUDGET_EXHAUSTED = 6
REASON_BLOCKED = 9
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


def decide_batch(cand_ad, score, floor_micros, first_price, country_id, device_id, size_id,
                 site_id, blocked_category_mask, blocked_adv_ptr, blocked_adv_ids, user_key,
                 user_known, is_test, ad_campaign, camp_active, camp_value_per_action_micros,
                 camp_pacing, camp_country_mask, camp_device_mask, camp_size_mask,
                 camp_category_mask, camp_advertiser_id, camp_site_allow_ptr, camp_site_allow_ids,
                 camp_site_block_ptr, camp_site_block_ids, camp_freq_cap, camp_freq_window_s,
                 camp_budget_micros, camp_spent_micros, camp_reserved_micros, freq, now_s,
                 shading, out_k, out_price_micros, out_value_micros, out_reason) -> int:
    """See adbid/_decision.pyi for argument shapes and dtypes."""
    n_ads, n_camps = len(ad_campaign), len(camp_active)
    error = 0
    for i in range(cand_ad.shape[0]):
        best = None  # (value, price, k, campaign)
        rejected_value, rejected_reason = -1, REASON_NO_CANDIDATES
        floor = int(floor_micros[i])
        site = int(site_id[i])
        blocked_advertisers = set(blocked_adv_ids[blocked_adv_ptr[i]:blocked_adv_ptr[i + 1]].tolist())
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
                      and _bit_set(camp_size_mask[c], size_id[i])):
                reason = REASON_TARGETING
            elif allow and site not in allow:
                reason = REASON_TARGETING
            elif (int(camp_category_mask[c]) & int(blocked_category_mask[i]) or site in block
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
                    price = max(int(float(value) * float(shading)), floor)
                if price <= 0:
                    reason = REASON_BELOW_FLOOR
                elif not is_test[i]:
                    available = (int(camp_budget_micros[c]) - int(camp_spent_micros[c])
                                 - int(camp_reserved_micros[c]))
                    if impression_cost_micros(price) > available:
                        reason = REASON_BUDGET_EXHAUSTED
            if reason == REASON_NONE:
                if best is None or value > best[0]:
                    best = (value, price, k, c)
            elif value > rejected_value:
                rejected_value, rejected_reason = value, reason
        if best is not None:
            value, price, k, c = best
            if not is_test[i]:
                camp_reserved_micros[c] += impression_cost_micros(price)
                if camp_freq_cap[c] > 0:
                    freq.add(int(user_key[i]), c, int(now_s), int(camp_freq_window_s[c]), 1)
            out_k[i], out_price_micros[i], out_value_micros[i], out_reason[i] = k, price, value, 0
        else:
            out_k[i], out_price_micros[i] = -1, 0
            out_value_micros[i] = max(rejected_value, 0)
            out_reason[i] = rejected_reason
    return error


def empty_outputs(n_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(out_k int32, out_price_micros int64, out_value_micros int64, out_reason int32), each [B]."""
    return (np.empty(n_events, np.int32), np.empty(n_events, np.int64),
            np.empty(n_events, np.int64), np.empty(n_events, np.int32))

"""Pure-Python reference of the decision core (ext/decision.pyx).

Same signature, same rules, same arithmetic order; slow on purpose-free
clarity. The parity tests run both on random and edge-case batches and require
identical outputs and identical budget reservations. Change both together.
"""

from __future__ import annotations

import numpy as np

from adbid.money import impression_cost_micros

REASON_NONE = 0
REASON_NO_CANDIDATES = 1
REASON_CAMPAIGN_INACTIVE = 2
REASON_TARGETING = 3
REASON_FREQUENCY_CAP = 4
REASON_BELOW_FLOOR = 5
REASON_BUDGET_EXHAUSTED = 6
MAX_VALUE_MICROS = 9.0e18


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


def _bit_set(mask: int, bit: int) -> bool:
    return 0 <= bit < 64 and (int(mask) >> int(bit)) & 1 == 1


def decide_batch(cand_ad, score, floor_micros, first_price, country_id, device_id, size_id,
                 is_test, ad_campaign, camp_active, camp_value_per_action_micros, camp_pacing,
                 camp_country_mask, camp_device_mask, camp_size_mask, camp_budget_micros,
                 camp_spent_micros, camp_reserved_micros, shading, out_k, out_price_micros,
                 out_value_micros, out_reason) -> int:
    """See adbid/_decision.pyi for argument shapes and dtypes."""
    n_ads, n_camps = len(ad_campaign), len(camp_active)
    error = 0
    for i in range(cand_ad.shape[0]):
        best = None  # (value, price, k, campaign)
        rejected_value, rejected_reason = -1, REASON_NO_CANDIDATES
        floor = int(floor_micros[i])
        for k in range(cand_ad.shape[1]):
            ad = int(cand_ad[i, k])
            if ad < 0 or ad >= n_ads:
                continue
            c = int(ad_campaign[ad])
            if c < 0 or c >= n_camps:
                error = 1
                continue
            value = value_micros(score[i, k], camp_value_per_action_micros[c], camp_pacing[c])
            price = 0
            if not camp_active[c]:
                reason = REASON_CAMPAIGN_INACTIVE
            elif not (_bit_set(camp_country_mask[c], country_id[i])
                      and _bit_set(camp_device_mask[c], device_id[i])
                      and _bit_set(camp_size_mask[c], size_id[i])):
                reason = REASON_TARGETING
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

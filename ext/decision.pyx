"""The bid-decision loop: the compiled core of adbid.

For each event it goes over the event's K candidates, checks eligibility
(campaign active, targeting, floor, budget), values each one in CPM micros,
picks the best, shades first-price bids and reserves the cost of one impression
at the bid price (ceil(price_cpm / 1000) micros) against the campaign's budget,
all in one pass with the GIL released.

Called only through adbid.decision.DecisionCore, which checks dtypes and shapes
and allocates the outputs. adbid.decision_reference holds the same rules in
plain Python; the parity tests compare the two exactly.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from decision_types cimport *  # reason and error codes

# Largest value that still converts to int64 exactly enough; values above are clamped.
cdef double MAX_VALUE_MICROS = 9.0e18


cdef inline int64_t value_micros(float score, int64_t value_per_action_micros,
                                 double pacing) noexcept nogil:
    """1000 x P(intent) x value per action x pacing, truncated to whole micros.

    The order of operations is the reference's: ((1000 * p) * vpa) * pacing.
    NaN or negative scores count as 0, scores above 1 as 1.
    """
    cdef double p = <double>score
    if not (p > 0.0):
        return 0
    if p > 1.0:
        p = 1.0
    cdef double v = 1000.0 * p * <double>value_per_action_micros * pacing
    if not (v > 0.0):
        return 0
    if v > MAX_VALUE_MICROS:
        v = MAX_VALUE_MICROS
    return <int64_t>v


cdef inline int64_t impression_cost_micros(int64_t price_cpm_micros) noexcept nogil:
    """What one impression at this CPM costs, rounded up: ceil(price / 1000).

    Rounding up keeps reservations conservative; settlement rounds the same way.
    """
    return (price_cpm_micros + 999) // 1000


cdef inline bint bit_set(uint64_t mask, int32_t bit) noexcept nogil:
    return 0 <= bit < 64 and (mask >> bit) & 1


def decide_batch(
    const int64_t[:, ::1] cand_ad,
    const float[:, ::1] score,
    const int64_t[::1] floor_micros,
    const uint8_t[::1] first_price,
    const int32_t[::1] country_id,
    const int32_t[::1] device_id,
    const int32_t[::1] size_id,
    const uint8_t[::1] is_test,
    const int32_t[::1] ad_campaign,
    const uint8_t[::1] camp_active,
    const int64_t[::1] camp_value_per_action_micros,
    const double[::1] camp_pacing,
    const uint64_t[::1] camp_country_mask,
    const uint64_t[::1] camp_device_mask,
    const uint64_t[::1] camp_size_mask,
    const int64_t[::1] camp_budget_micros,
    const int64_t[::1] camp_spent_micros,
    int64_t[::1] camp_reserved_micros,
    double shading,
    int32_t[::1] out_k,
    int64_t[::1] out_price_micros,
    int64_t[::1] out_value_micros,
    int32_t[::1] out_reason,
):
    """Decide a batch in place; returns 0 or an ErrorCode. See adbid/_decision.pyi."""
    cdef Py_ssize_t n_events = cand_ad.shape[0]
    cdef Py_ssize_t k_cands = cand_ad.shape[1]
    cdef Py_ssize_t n_ads = ad_campaign.shape[0]
    cdef Py_ssize_t n_camps = camp_active.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t ad, value, price, available, floor
    cdef int64_t best_value, best_price, rejected_value
    cdef int32_t c, best_k, best_c, reason, rejected_reason
    cdef int error = OK

    with nogil:
        for i in range(n_events):
            best_k = -1
            best_c = -1
            best_value = -1
            best_price = 0
            rejected_value = -1
            rejected_reason = REASON_NO_CANDIDATES
            floor = floor_micros[i]
            for k in range(k_cands):
                ad = cand_ad[i, k]
                if ad < 0 or ad >= n_ads:
                    continue  # FAISS pads missing neighbours with -1
                c = ad_campaign[ad]
                if c < 0 or c >= n_camps:
                    error = ERR_AD_CAMPAIGN_OUT_OF_RANGE
                    continue
                value = value_micros(score[i, k], camp_value_per_action_micros[c],
                                     camp_pacing[c])
                price = 0
                if not camp_active[c]:
                    reason = REASON_CAMPAIGN_INACTIVE
                elif not (bit_set(camp_country_mask[c], country_id[i])
                          and bit_set(camp_device_mask[c], device_id[i])
                          and bit_set(camp_size_mask[c], size_id[i])):
                    reason = REASON_TARGETING
                elif value <= 0 or value < floor:
                    reason = REASON_BELOW_FLOOR
                else:
                    reason = REASON_NONE
                    price = value
                    if first_price[i]:
                        price = <int64_t>(<double>value * shading)
                        if price < floor:
                            price = floor
                    if price <= 0:
                        reason = REASON_BELOW_FLOOR
                    elif not is_test[i]:
                        available = (camp_budget_micros[c] - camp_spent_micros[c]
                                     - camp_reserved_micros[c])
                        if impression_cost_micros(price) > available:
                            reason = REASON_BUDGET_EXHAUSTED
                if reason == REASON_NONE:
                    if value > best_value:  # strict: ties keep the earlier candidate
                        best_value = value
                        best_price = price
                        best_k = <int32_t>k
                        best_c = c
                elif value > rejected_value:
                    rejected_value = value
                    rejected_reason = reason
            if best_k >= 0:
                if not is_test[i]:
                    camp_reserved_micros[best_c] += impression_cost_micros(best_price)
                out_k[i] = best_k
                out_price_micros[i] = best_price
                out_value_micros[i] = best_value
                out_reason[i] = REASON_NONE
            else:
                out_k[i] = -1
                out_price_micros[i] = 0
                out_value_micros[i] = rejected_value if rejected_value > 0 else 0
                out_reason[i] = rejected_reason
    return error

"""The bid-decision loop: the compiled core of adbid.

For each event it goes over the event's K candidates, checks eligibility
(campaign active, targeting, publisher blocks, frequency cap, floor, budget),
values each one in CPM micros, picks the best, shades first-price bids, and
reserves the cost of one impression at the bid price (ceil(price_cpm / 1000)
micros) against the campaign's budget and one impression against the user's
frequency cap, all in one pass with the GIL released.

Called only through adbid.decision.DecisionCore, which checks dtypes and shapes
and allocates the outputs. adbid.decision_reference holds the same rules in
plain Python; the parity tests compare the two exactly.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from decision_types cimport *  # reason and error codes, FreqSlot

# Largest value that still converts to int64 exactly enough; values above are clamped.
cdef double MAX_VALUE_MICROS = 9.0e18
# Linear probing looks this far before evicting the oldest counter it saw.
cdef int MAX_PROBES = 32


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


cdef inline bint in_list(const int32_t[::1] ids, int32_t start, int32_t stop,
                         int32_t value) noexcept nogil:
    """Is value among ids[start:stop]? (Lists are short: a linear scan.)"""
    cdef int32_t j
    for j in range(start, stop):
        if ids[j] == value:
            return True
    return False


cdef inline uint64_t freq_key(uint64_t user_key, int32_t campaign) noexcept nogil:
    """splitmix64 of (user, campaign); never 0, which marks an empty slot."""
    cdef uint64_t z = user_key ^ ((<uint64_t>campaign + 1) * <uint64_t>0x9E3779B97F4A7C15)
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return (z ^ (z >> 31)) | 1


cdef class FrequencyTable:
    """Windowed impression counts per (user, campaign): an open-addressing hash table in C.

    A counter's window starts at its first impression and lasts the campaign's
    window_s; an expired counter reads as 0 and restarts at the next impression.
    When MAX_PROBES slots are taken the oldest is evicted (counted in `evictions`):
    size the table for the active (user, campaign) pairs so that this stays 0.
    """
    cdef FreqSlot* slots
    cdef uint64_t mask
    cdef readonly Py_ssize_t capacity
    cdef readonly int64_t evictions

    def __cinit__(self, Py_ssize_t capacity=1 << 20):
        cdef Py_ssize_t n = 1
        while n < capacity:
            n <<= 1
        self.slots = <FreqSlot*>calloc(n, sizeof(FreqSlot))
        if self.slots == NULL:
            raise MemoryError(f"frequency table of {n} slots")
        self.capacity = n
        self.mask = <uint64_t>(n - 1)
        self.evictions = 0

    def __dealloc__(self):
        free(self.slots)

    cdef FreqSlot* slot(self, uint64_t key, bint create) noexcept nogil:
        cdef uint64_t i = key & self.mask
        cdef FreqSlot* s
        cdef FreqSlot* oldest = NULL
        cdef int p
        for p in range(MAX_PROBES):
            s = &self.slots[(i + p) & self.mask]
            if s.key == key:
                return s
            if s.key == 0:
                if create:
                    s.key = key
                    s.window_start_s = 0
                    s.count = 0
                    return s
                return NULL
            if oldest == NULL or s.window_start_s < oldest.window_start_s:
                oldest = s
        if not create:
            return NULL
        self.evictions += 1
        oldest.key = key
        oldest.window_start_s = 0
        oldest.count = 0
        return oldest

    cdef inline int32_t current(self, uint64_t user_key, int32_t campaign, int64_t now_s,
                                int64_t window_s) noexcept nogil:
        cdef FreqSlot* s = self.slot(freq_key(user_key, campaign), False)
        if s == NULL or now_s - s.window_start_s >= window_s:
            return 0
        return s.count

    cdef inline void add_one(self, uint64_t user_key, int32_t campaign, int64_t now_s,
                             int64_t window_s, int32_t delta) noexcept nogil:
        cdef FreqSlot* s = self.slot(freq_key(user_key, campaign), delta > 0)
        if s == NULL:
            return
        if now_s - s.window_start_s >= window_s:
            if delta < 0:
                return  # the impression being released belonged to an expired window
            s.window_start_s = now_s
            s.count = 0
        s.count += delta
        if s.count < 0:
            s.count = 0

    def count(self, uint64_t user_key, int32_t campaign, int64_t now_s, int64_t window_s):
        """Impressions of this user for this campaign in the current window."""
        return self.current(user_key, campaign, now_s, window_s)

    def add(self, uint64_t user_key, int32_t campaign, int64_t now_s, int64_t window_s,
            int32_t delta=1):
        """Count (delta > 0) or give back (delta < 0, e.g. a lost auction) impressions."""
        self.add_one(user_key, campaign, now_s, window_s, delta)


def decide_batch(
    const int64_t[:, ::1] cand_ad,
    const float[:, ::1] score,
    const int64_t[::1] floor_micros,
    const uint8_t[::1] first_price,
    const int32_t[::1] country_id,
    const int32_t[::1] device_id,
    const int32_t[::1] size_id,
    const int32_t[::1] site_id,
    const uint64_t[::1] blocked_category_mask,
    const int32_t[::1] blocked_adv_ptr,
    const int32_t[::1] blocked_adv_ids,
    const uint64_t[::1] user_key,
    const uint8_t[::1] user_known,
    const uint8_t[::1] is_test,
    const int32_t[::1] ad_campaign,
    const uint8_t[::1] camp_active,
    const int64_t[::1] camp_value_per_action_micros,
    const double[::1] camp_pacing,
    const uint64_t[::1] camp_country_mask,
    const uint64_t[::1] camp_device_mask,
    const uint64_t[::1] camp_size_mask,
    const uint64_t[::1] camp_category_mask,
    const int32_t[::1] camp_advertiser_id,
    const int32_t[::1] camp_site_allow_ptr,
    const int32_t[::1] camp_site_allow_ids,
    const int32_t[::1] camp_site_block_ptr,
    const int32_t[::1] camp_site_block_ids,
    const int32_t[::1] camp_freq_cap,
    const int64_t[::1] camp_freq_window_s,
    const int64_t[::1] camp_budget_micros,
    const int64_t[::1] camp_spent_micros,
    int64_t[::1] camp_reserved_micros,
    FrequencyTable freq not None,
    int64_t now_s,
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
    cdef int32_t c, best_k, best_c, reason, rejected_reason, site
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
            site = site_id[i]
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
                elif (camp_site_allow_ptr[c + 1] > camp_site_allow_ptr[c]
                      and not in_list(camp_site_allow_ids, camp_site_allow_ptr[c],
                                      camp_site_allow_ptr[c + 1], site)):
                    reason = REASON_TARGETING
                elif (camp_category_mask[c] & blocked_category_mask[i]
                      or in_list(camp_site_block_ids, camp_site_block_ptr[c],
                                 camp_site_block_ptr[c + 1], site)
                      or in_list(blocked_adv_ids, blocked_adv_ptr[i], blocked_adv_ptr[i + 1],
                                 camp_advertiser_id[c])):
                    reason = REASON_BLOCKED
                elif camp_freq_cap[c] > 0 and (
                        not user_known[i]
                        or freq.current(user_key[i], c, now_s, camp_freq_window_s[c])
                        >= camp_freq_cap[c]):
                    reason = REASON_FREQUENCY_CAP
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
                    if camp_freq_cap[best_c] > 0:
                        freq.add_one(user_key[i], best_c, now_s, camp_freq_window_s[best_c], 1)
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

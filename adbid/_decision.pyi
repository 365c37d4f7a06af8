# Stub for the compiled decision core (ext/decision.pyx). Array arguments are
# C-contiguous numpy arrays; the real Cython types are in the trailing comments.
# B = events, K = candidates per event, A = ads, C = campaigns. "CSR" lists:
# the ids of row r are ids[ptr[r]:ptr[r + 1]].
import numpy as np
import numpy.typing as npt

class FrequencyTable:
    capacity: int  # Py_ssize_t; slots, a power of 2
    evictions: int  # int64_t; counters lost to a full probe sequence
    def __init__(self, capacity: int = ...) -> None: ...
    def count(self, user_key: int, campaign: int, now_s: int, window_s: int) -> int: ...
    def add(self, user_key: int, campaign: int, now_s: int, window_s: int,
            delta: int = ...) -> None: ...

def decide_batch(
    cand_ad: npt.NDArray[np.int64],  # const int64_t[B, K]; ad row or -1
    score: npt.NDArray[np.float32],  # const float[B, K]; P(intent)
    floor_micros: npt.NDArray[np.int64],  # const int64_t[B]; CPM micros
    first_price: npt.NDArray[np.uint8],  # const uint8_t[B]; 1 = first-price auction
    country_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    device_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    size_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    site_id: npt.NDArray[np.int32],  # const int32_t[B]; site-domain id, -1 = not in any list
    blocked_category_mask: npt.NDArray[np.uint64],  # const uint64_t[B]; categories the publisher blocks
    blocked_adv_ptr: npt.NDArray[np.int32],  # const int32_t[B + 1]; CSR over blocked_adv_ids
    blocked_adv_ids: npt.NDArray[np.int32],  # const int32_t[...]; advertiser ids the publisher blocks
    user_key: npt.NDArray[np.uint64],  # const uint64_t[B]; hash of the user id
    user_known: npt.NDArray[np.uint8],  # const uint8_t[B]; 0 = no usable user id
    is_test: npt.NDArray[np.uint8],  # const uint8_t[B]; 1 = test traffic, no budget/frequency effect
    ad_campaign: npt.NDArray[np.int32],  # const int32_t[A]; campaign row of each ad
    camp_active: npt.NDArray[np.uint8],  # const uint8_t[C]
    camp_value_per_action_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_pacing: npt.NDArray[np.float64],  # const double[C]; 0..1
    camp_country_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_device_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_size_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_category_mask: npt.NDArray[np.uint64],  # const uint64_t[C]; the campaign's categories
    camp_advertiser_id: npt.NDArray[np.int32],  # const int32_t[C]
    camp_site_allow_ptr: npt.NDArray[np.int32],  # const int32_t[C + 1]; empty list = any site
    camp_site_allow_ids: npt.NDArray[np.int32],  # const int32_t[...]
    camp_site_block_ptr: npt.NDArray[np.int32],  # const int32_t[C + 1]
    camp_site_block_ids: npt.NDArray[np.int32],  # const int32_t[...]
    camp_freq_cap: npt.NDArray[np.int32],  # const int32_t[C]; impressions per window, 0 = uncapped
    camp_freq_window_s: npt.NDArray[np.int64],  # const int64_t[C]
    camp_budget_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_spent_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_reserved_micros: npt.NDArray[np.int64],  # int64_t[C]; += ceil(price / 1000) per bid
    freq: FrequencyTable,  # counts +1 per (user, campaign) bid on a capped campaign
    now_s: int,  # int64_t; Unix seconds, for frequency windows
    shading: float,  # double; first-price bid = value x shading, at least the floor
    out_k: npt.NDArray[np.int32],  # int32_t[B]; chosen candidate or -1
    out_price_micros: npt.NDArray[np.int64],  # int64_t[B]
    out_value_micros: npt.NDArray[np.int64],  # int64_t[B]
    out_reason: npt.NDArray[np.int32],  # int32_t[B]; NoBidReason value
) -> int: ...  # 0 or an ErrorCode from ext/decision_types.pxd

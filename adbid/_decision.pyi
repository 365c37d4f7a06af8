# Stub for the compiled decision core (ext/decision.pyx). Array arguments are
# C-contiguous numpy arrays; the real Cython types are in the trailing comments.
# B = events, K = candidates per event, A = ads, C = campaigns.
import numpy as np
import numpy.typing as npt

def decide_batch(
    cand_ad: npt.NDArray[np.int64],  # const int64_t[B, K]; ad row or -1
    score: npt.NDArray[np.float32],  # const float[B, K]; P(intent)
    floor_micros: npt.NDArray[np.int64],  # const int64_t[B]; CPM micros
    first_price: npt.NDArray[np.uint8],  # const uint8_t[B]; 1 = first-price auction
    country_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    device_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    size_id: npt.NDArray[np.int32],  # const int32_t[B]; bit index 0..63
    is_test: npt.NDArray[np.uint8],  # const uint8_t[B]; 1 = test traffic, no reservation
    ad_campaign: npt.NDArray[np.int32],  # const int32_t[A]; campaign row of each ad
    camp_active: npt.NDArray[np.uint8],  # const uint8_t[C]
    camp_value_per_action_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_pacing: npt.NDArray[np.float64],  # const double[C]; 0..1
    camp_country_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_device_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_size_mask: npt.NDArray[np.uint64],  # const uint64_t[C]
    camp_budget_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_spent_micros: npt.NDArray[np.int64],  # const int64_t[C]
    camp_reserved_micros: npt.NDArray[np.int64],  # int64_t[C]; += ceil(price / 1000) per bid
    shading: float,  # double; first-price bid = value x shading, at least the floor
    out_k: npt.NDArray[np.int32],  # int32_t[B]; chosen candidate or -1
    out_price_micros: npt.NDArray[np.int64],  # int64_t[B]
    out_value_micros: npt.NDArray[np.int64],  # int64_t[B]
    out_reason: npt.NDArray[np.int32],  # int32_t[B]; NoBidReason value
) -> int: ...  # 0 or an ErrorCode from ext/decision_types.pxd

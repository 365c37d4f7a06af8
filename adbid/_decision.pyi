# Stub for the compiled decision core (ext/decision.pyx). Array arguments are
# C-contiguous numpy arrays; the real Cython types are in the trailing comments.
# B = events, K = candidates per event, A = ads, C = campaigns. "CSR" lists:
# the ids of row r are ids[ptr[r]:ptr[r + 1]].
from typing import Protocol

import numpy as np
import numpy.typing as npt

class FrequencyTable:
    capacity: int  # Py_ssize_t; slots, a power of 2
    evictions: int  # int64_t; counters lost to a full probe sequence
    def __init__(self, capacity: int = ...) -> None: ...
    def count(self, user_key: int, campaign: int, now_s: int, window_s: int) -> int: ...
    def add(self, user_key: int, campaign: int, now_s: int, window_s: int,
            delta: int = ...) -> None: ...

def impression_cost_micros(price_cpm_micros: int) -> int: ...  # int64_t -> int64_t; ceil(price / 1000)
def impression_costs_micros(
    price_cpm_micros: npt.NDArray[np.int64],  # const int64_t[N]
) -> list[int]: ...

class _Events(Protocol):  # adbid.stages.batch.EventBatch, resolved; [B] each
    floor_micros: npt.NDArray[np.int64]  # const int64_t; CPM micros
    first_price: npt.NDArray[np.uint8]  # const uint8_t; 1 = first-price auction
    country_bit: npt.NDArray[np.int32]  # const int32_t; bit index 0..63
    device_bit: npt.NDArray[np.int32]  # const int32_t; bit index 0..63
    size_bit: npt.NDArray[np.int32]  # const int32_t; bit index 0..63
    site_id: npt.NDArray[np.int32] | None  # const int32_t; -1 = in no list; None = unresolved
    blocked_category_mask: npt.NDArray[np.uint64] | None  # const uint64_t
    blocked_adv_ptr: npt.NDArray[np.int32] | None  # const int32_t[B + 1]; CSR over ids
    blocked_adv_ids: npt.NDArray[np.int32] | None  # const int32_t[...]; advertiser ids
    user_key: npt.NDArray[np.uint64] | None  # const uint64_t; hash of the user id
    user_known: npt.NDArray[np.uint8] | None  # const uint8_t; 0 = no usable user id
    is_test: npt.NDArray[np.uint8]  # const uint8_t; 1 = test traffic, no budget effect

class _Campaigns(Protocol):  # adbid.world.campaigns.CampaignTable; [C] each
    value_per_action_micros: npt.NDArray[np.int64]  # const int64_t
    country_mask: npt.NDArray[np.uint64]  # const uint64_t
    device_mask: npt.NDArray[np.uint64]  # const uint64_t
    size_mask: npt.NDArray[np.uint64]  # const uint64_t
    category_mask: npt.NDArray[np.uint64]  # const uint64_t; the campaign's categories
    advertiser_id: npt.NDArray[np.int32]  # const int32_t
    site_allow_ptr: npt.NDArray[np.int32]  # const int32_t[C + 1]; empty list = any site
    site_allow_ids: npt.NDArray[np.int32]  # const int32_t[...]
    site_block_ptr: npt.NDArray[np.int32]  # const int32_t[C + 1]
    site_block_ids: npt.NDArray[np.int32]  # const int32_t[...]
    freq_cap: npt.NDArray[np.int32]  # const int32_t; impressions per window, 0 = uncapped
    freq_window_s: npt.NDArray[np.int64]  # const int64_t

class _Books(Protocol):  # adbid.money.ledger.SpendLedger; [C] each
    active: npt.NDArray[np.uint8]  # const uint8_t
    budget_micros: npt.NDArray[np.int64]  # const int64_t
    spent_micros: npt.NDArray[np.int64]  # const int64_t
    reserved_micros: npt.NDArray[np.int64]  # int64_t; += ceil(price / 1000) per bid

class _Outputs(Protocol):  # adbid.stages.decision.Decisions; [B] each, written
    candidate: npt.NDArray[np.int32]  # int32_t; chosen column of cand_ad or -1
    price_cpm_micros: npt.NDArray[np.int64]  # int64_t
    value_cpm_micros: npt.NDArray[np.int64]  # int64_t
    reason: npt.NDArray[np.int32]  # int32_t; NoBidReason value

def decide_batch(
    cand_ad: npt.NDArray[np.int64],  # const int64_t[B, K]; ad row or -1
    score: npt.NDArray[np.float32],  # const float[B, K]; P(intent)
    events: _Events,
    campaigns: _Campaigns,
    ad_campaign: npt.NDArray[np.int32],  # const int32_t[A]; campaign row of each ad
    pacing: npt.NDArray[np.float64],  # const double[C]; 0..1
    books: _Books,
    frequency: FrequencyTable,  # counts +1 per (user, campaign) bid on a capped campaign
    now_s: int,  # int64_t; Unix seconds, for frequency windows
    shading: float,  # double; first-price bid = value x shading, at least the floor
    out: _Outputs,
) -> int: ...  # 0 or an ErrorCode from ext/decision_types.pxd

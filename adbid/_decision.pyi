# Stub for the compiled decision core (ext/decision.pyx). Array arguments are
# C-contiguous numpy arrays; the real Cython types are in the trailing comments.
# B = events, K = candidates per event, A = ads, C = campaigns. "CSR" lists:
# the ids of row r are ids[ptr[r]:ptr[r + 1]].
from typing import Protocol

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

@disjoint_base  # a cdef class: no multiple inheritance with another one
class FrequencyTable:
    capacity: int  # Py_ssize_t; slots, a power of 2
    evictions: int  # int64_t; counters lost to a full probe sequence
    def __new__(cls, capacity: int = ...) -> FrequencyTable: ...  # Py_ssize_t
    def count(self, user_key: int, campaign: int, now_s: int, window_s: int) -> int: ...
    def add(self, user_key: int, campaign: int, now_s: int, window_s: int,
            delta: int = ...) -> None: ...
    def set_counts(
        self,
        user_key: npt.NDArray[np.uint64],  # const uint64_t[N]
        campaign: npt.NDArray[np.int32],  # const int32_t[N]
        window_s: npt.NDArray[np.int64],  # const int64_t[N]
        count: npt.NDArray[np.int64],  # const int64_t[N]
        now_s: int,
    ) -> int: ...

# ceil(price / 1000): what one impression at a CPM price costs (int64_t -> int64_t)
def impression_cost_micros(price_cpm_micros: int) -> int: ...
def impression_costs_micros(
    price_cpm_micros: npt.NDArray[np.int64],  # const int64_t[N]
) -> list[int]: ...

class _Events(Protocol):  # adbid.stages.batch.EventBatch, resolved; [B] each
    @property
    def floor_micros(self) -> npt.NDArray[np.int64]: ...  # const int64_t; CPM micros
    @property
    def first_price(self) -> npt.NDArray[np.uint8]: ...  # const uint8_t; 1 = first-price auction
    @property
    def country_bit(self) -> npt.NDArray[np.int32]: ...  # const int32_t; bit index 0..63
    @property
    def device_bit(self) -> npt.NDArray[np.int32]: ...  # const int32_t; bit index 0..63
    @property
    def size_bit(self) -> npt.NDArray[np.int32]: ...  # const int32_t; bit index 0..63
    @property
    def site_id(self) -> npt.NDArray[np.int32] | None: ...  # const int32_t; -1 = in no list; None = unresolved
    @property
    def blocked_category_mask(self) -> npt.NDArray[np.uint64] | None: ...  # const uint64_t
    @property
    def blocked_adv_ptr(self) -> npt.NDArray[np.int32] | None: ...  # const int32_t[B + 1]; CSR over ids
    @property
    def blocked_adv_ids(self) -> npt.NDArray[np.int32] | None: ...  # const int32_t[...]; advertiser ids
    @property
    def blocked_subcategory_ptr(self) -> npt.NDArray[np.int32] | None: ...  # const int32_t[B + 1]; CSR
    @property
    def blocked_subcategory_ids(self) -> npt.NDArray[np.int32] | None: ...  # const int32_t[...]; subcategory ids
    @property
    def user_key(self) -> npt.NDArray[np.uint64] | None: ...  # const uint64_t; hash of the user id
    @property
    def user_known(self) -> npt.NDArray[np.uint8] | None: ...  # const uint8_t; 0 = no usable user id
    @property
    def is_test(self) -> npt.NDArray[np.uint8]: ...  # const uint8_t; 1 = test traffic, no budget effect

class _Campaigns(Protocol):  # adbid.world.campaigns.CampaignTable; [C] each
    @property
    def value_per_action_micros(self) -> npt.NDArray[np.int64]: ...  # const int64_t
    @property
    def country_mask(self) -> npt.NDArray[np.uint64]: ...  # const uint64_t
    @property
    def device_mask(self) -> npt.NDArray[np.uint64]: ...  # const uint64_t
    @property
    def size_mask(self) -> npt.NDArray[np.uint64]: ...  # const uint64_t
    @property
    def category_mask(self) -> npt.NDArray[np.uint64]: ...  # const uint64_t; the campaign's categories
    @property
    def advertiser_id(self) -> npt.NDArray[np.int32]: ...  # const int32_t
    @property
    def site_allow_ptr(self) -> npt.NDArray[np.int32]: ...  # const int32_t[C + 1]; empty list = any site
    @property
    def site_allow_ids(self) -> npt.NDArray[np.int32]: ...  # const int32_t[...]
    @property
    def site_block_ptr(self) -> npt.NDArray[np.int32]: ...  # const int32_t[C + 1]
    @property
    def site_block_ids(self) -> npt.NDArray[np.int32]: ...  # const int32_t[...]
    @property
    def subcategory_ptr(self) -> npt.NDArray[np.int32]: ...  # const int32_t[C + 1]; CSR
    @property
    def subcategory_ids(self) -> npt.NDArray[np.int32]: ...  # const int32_t[...]; IAB subcategory ids
    @property
    def freq_cap(self) -> npt.NDArray[np.int32]: ...  # const int32_t; impressions per window, 0 = uncapped
    @property
    def freq_window_s(self) -> npt.NDArray[np.int64]: ...  # const int64_t

class _Books(Protocol):  # adbid.money.ledger.SpendLedger; [C] each
    @property
    def active(self) -> npt.NDArray[np.uint8]: ...  # const uint8_t
    @property
    def budget_micros(self) -> npt.NDArray[np.int64]: ...  # const int64_t
    @property
    def spent_micros(self) -> npt.NDArray[np.int64]: ...  # const int64_t
    @property
    def reserved_micros(self) -> npt.NDArray[np.int64]: ...  # int64_t; += ceil(price / 1000) per bid

class _Outputs(Protocol):  # adbid.stages.decision.Decisions; [B] each, written
    @property
    def candidate(self) -> npt.NDArray[np.int32]: ...  # int32_t; chosen column k; no bid: -2 - k for the best rejected candidate (value > 0), else -1
    @property
    def price_cpm_micros(self) -> npt.NDArray[np.int64]: ...  # int64_t
    @property
    def value_cpm_micros(self) -> npt.NDArray[np.int64]: ...  # int64_t
    @property
    def reason(self) -> npt.NDArray[np.int32]: ...  # int32_t; NoBidReason value

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
    event_shading: npt.NDArray[np.float64] | None = ...,  # const double[B]; per event
) -> int: ...  # 0 or an ErrorCode from ext/decision_types.pxd

# Declarations shared by the decision core (cimported by decision.pyx). Its no-bid
# reason codes are generated from the proto at build time: decision_reasons.pxd.
from libc.stdint cimport int32_t, int64_t, uint64_t

cdef enum ErrorCode:
    OK = 0
    ERR_AD_CAMPAIGN_OUT_OF_RANGE = 1  # an ad points at a campaign row outside the table

# One frequency-cap counter: impressions of one user for one campaign in the
# window that started at window_start_s. key 0 marks an empty slot.
cdef struct FreqSlot:
    uint64_t key
    int64_t window_start_s
    int32_t count

# Declarations shared by the decision core (cimported by decision.pyx).
# The reason codes equal the values of adbid.v1.NoBidReason
# (tests/test_decision_parity.py checks it).
from libc.stdint cimport int32_t, int64_t, uint64_t

cdef enum Reason:
    REASON_NONE = 0
    REASON_NO_CANDIDATES = 1
    REASON_CAMPAIGN_INACTIVE = 2
    REASON_TARGETING = 3
    REASON_FREQUENCY_CAP = 4
    REASON_BELOW_FLOOR = 5
    REASON_BUDGET_EXHAUSTED = 6
    REASON_BLOCKED = 9

cdef enum ErrorCode:
    OK = 0
    ERR_AD_CAMPAIGN_OUT_OF_RANGE = 1  # an ad points at a campaign row outside the table

# One frequency-cap counter: impressions of one user for one campaign in the
# window that started at window_start_s. key 0 marks an empty slot.
cdef struct FreqSlot:
    uint64_t key
    int64_t window_start_s
    int32_t count

# Declarations shared by the decision core (cimported by decision.pyx). The reason codes equal the values of
# adbid.v1.NoBidReason (tests/test_decision_parity.py checks it).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

cdef enum Reason:
    REASON_NONE = 0
    REASON_NO_CANDIDATES = 1
    REASON_CAMPAIGN_INACTIVE = 2
    REASON_TARGETING = 3
    REASON_FREQUENCY_CAP = 4
    REASON_BELOW_FLOOR = 5
    REASON_BUDGET_EXHAUSTED = 6

cdef enum ErrorCode:
    OK = 0
    ERR_AD_CAMPAIGN_OUT_OF_RANGE = 1

# Stub for the compiled event fingerprints (ext/fingerprint.pyx).
from collections.abc import Sequence

import numpy as np

def fingerprints(
    at: np.ndarray,  # const int64_t[:]; positions
    user_key: np.ndarray,  # const uint64_t[:]; adbid._idtable.user_keys of the user ids
    context_text: list[str],
    site_domain: list[str],
    first_price: np.ndarray,  # const uint8_t[:]
    is_test: np.ndarray,  # const uint8_t[:]
    country_bit: np.ndarray,  # const int32_t[:]
    size_bit: np.ndarray,  # const int32_t[:]
    device_type: np.ndarray,  # const int64_t[:]
    floor_micros: np.ndarray,  # const int64_t[:]
    advertisers: Sequence[str],
    advertisers_count: np.ndarray,  # const int64_t[:]
    categories: Sequence[str],
    categories_count: np.ndarray,  # const int64_t[:]
) -> np.ndarray: ...  # uint64[len(at)]

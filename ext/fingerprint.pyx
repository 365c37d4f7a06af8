# cython: language_level=3
"""What a retried event is compared by: a hash of each event's content, in one pass.

adbid.stages.batch.EventBatch.fingerprints keeps it with each open reservation, so a
retried request id gets its first answer back only when its content is the same.
Everything but the request id goes in; block lists as sets (each event's entries'
hashes summed). The user by its key; other strings by Python's own hash (which str
caches), so a fingerprint is stable within the process only, as long as reservations live.
"""

from cpython.object cimport PyObject_Hash
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

import numpy as np


cdef uint64_t PRIME = 0x100000001B3ULL


cdef inline uint64_t set_hash(list entries, int64_t start, int64_t stop) except? 0:
    """The entries' hashes summed: the same for the same set in any order."""
    cdef uint64_t total = 0
    cdef int64_t i
    for i in range(start, stop):
        total += <uint64_t> PyObject_Hash(entries[i])
    return total


def fingerprints(const int64_t[:] at, const uint64_t[:] user_key, list context_text,
                 list site_domain, const uint8_t[:] first_price, const uint8_t[:] is_test,
                 const int32_t[:] country_bit, const int32_t[:] size_bit,
                 const int64_t[:] device_type, const int64_t[:] floor_micros,
                 advertisers, const int64_t[:] advertisers_count, categories,
                 const int64_t[:] categories_count):
    """uint64[len(at)]: the fingerprint of the event at each of these positions.
    `user_key`: uint64[B] (adbid._idtable.user_keys of the user ids); the block lists
    flat, event i's entries the next *_count[i] of them."""
    cdef Py_ssize_t n = at.shape[0], b = first_price.shape[0], i, j, e
    cdef uint64_t mixed
    cdef list adv = advertisers if type(advertisers) is list else list(advertisers)
    cdef list cat = categories if type(categories) is list else list(categories)
    if advertisers_count.shape[0] != b or categories_count.shape[0] != b \
            or user_key.shape[0] != b:
        raise ValueError("fingerprints: user keys or block list counts do not match the batch")
    adv_start_ = np.zeros(b + 1, dtype=np.int64)
    cat_start_ = np.zeros(b + 1, dtype=np.int64)
    cdef int64_t[::1] adv_start = adv_start_
    cdef int64_t[::1] cat_start = cat_start_
    for i in range(b):
        adv_start[i + 1] = adv_start[i] + advertisers_count[i]
        cat_start[i + 1] = cat_start[i] + categories_count[i]
    if adv_start[b] != len(adv) or cat_start[b] != len(cat):
        raise ValueError("fingerprints: block lists do not match their counts")
    out_ = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] out = out_
    for j in range(n):
        e = at[j]
        if e < 0 or e >= b:
            raise IndexError(f"fingerprints: position {e} of {b}")
        mixed = user_key[e]
        mixed = mixed * PRIME ^ <uint64_t> PyObject_Hash(context_text[e])
        mixed = mixed * PRIME ^ <uint64_t> PyObject_Hash(site_domain[e])
        mixed = (mixed * PRIME ^ <uint64_t> floor_micros[e]) * PRIME ^ (
            <uint64_t> first_price[e] | <uint64_t> is_test[e] << 1
            | <uint64_t> country_bit[e] << 2 | <uint64_t> size_bit[e] << 10
            | <uint64_t> device_type[e] << 18)
        mixed = mixed * PRIME ^ set_hash(adv, adv_start[e], adv_start[e + 1])
        out[j] = mixed * PRIME ^ set_hash(cat, cat_start[e], cat_start[e + 1])
    return out_

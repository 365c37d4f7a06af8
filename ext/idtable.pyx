"""User id -> embedding row: an open-addressing hash table in C over the world's id array.

No Python object per user: the table holds each id's 64-bit hash (FNV-1a over its code
points) and row, and a hit is confirmed against the id itself in the world's fixed-width
string array (numpy '<U', code points as uint32, zero-padded), which it keeps a view of.
Built in one pass without the GIL; ids that mean "no user" (empty, or only '0' and '-', as
a zeroed device id) are left out, as are repeats of an id already in (the first row wins).

The same hash is a user's key for frequency counts (`user_keys`): it depends on the id
alone, so every process and host that shares counts (through Redis) and every restart
(the ledger's log keeps each reservation's key) agrees on it, which Python's own str
hash, seeded afresh in each process, does not.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import numpy as np

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    Py_UCS4 PyUnicode_READ_CHAR(object o, Py_ssize_t index)

cdef uint64_t FNV_OFFSET = 14695981039346656037ULL
cdef uint64_t FNV_PRIME = 1099511628211ULL


cdef inline uint64_t hash_points(const uint32_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    return h


cdef inline uint64_t hash_str(str s):
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(PyUnicode_GET_LENGTH(s)):
        h = (h ^ <uint32_t>PyUnicode_READ_CHAR(s, i)) * FNV_PRIME
    return h


def user_keys(list user_ids):
    """uint64 key of each user id: FNV-1a (64 bits) over its code points."""
    cdef Py_ssize_t n = len(user_ids), i
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        o[i] = hash_str(user_ids[i])
    return out


cdef inline bint no_user(const uint32_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] != 48 and p[i] != 45:  # '0', '-'
            return False
    return True


cdef class IdTable:
    cdef uint64_t* hashes
    cdef int32_t* rows
    cdef uint64_t mask
    cdef readonly Py_ssize_t width
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t duplicates  # ids met again after their first row
    cdef const uint32_t[:, ::1] points
    cdef object ids

    def __cinit__(self, ids):
        """`ids`: the world's user ids, a numpy '<U' array (row = embedding row)."""
        self.hashes = NULL
        self.rows = NULL
        arr = np.ascontiguousarray(ids)
        if arr.dtype.kind != "U":
            raise TypeError(f"user ids must be a numpy str array, not {arr.dtype}")
        cdef Py_ssize_t n = arr.shape[0]
        self.width = max(arr.dtype.itemsize // 4, 1)
        self.ids = arr if n and arr.dtype.itemsize else np.zeros(max(n, 1), "<U1")
        self.points = self.ids.view(np.uint32).reshape(len(self.ids), self.width)
        cdef Py_ssize_t cap = 16
        while cap < n + n // 2:
            cap *= 2
        self.mask = cap - 1
        self.hashes = <uint64_t*>malloc(cap * sizeof(uint64_t))
        self.rows = <int32_t*>malloc(cap * sizeof(int32_t))
        if self.hashes == NULL or self.rows == NULL:
            raise MemoryError()
        cdef Py_ssize_t i, length, slot
        cdef uint64_t h
        cdef const uint32_t* p
        with nogil:
            for i in range(cap):
                self.rows[i] = -1
            for i in range(n):
                p = &self.points[i, 0]
                length = self.width
                while length > 0 and p[length - 1] == 0:
                    length -= 1
                if no_user(p, length):
                    continue
                h = hash_points(p, length)
                slot = h & self.mask
                while self.rows[slot] >= 0:
                    if self.hashes[slot] == h and self._same_row(self.rows[slot], p, length):
                        self.duplicates += 1
                        break
                    slot = (slot + 1) & self.mask
                if self.rows[slot] < 0:
                    self.hashes[slot] = h
                    self.rows[slot] = <int32_t>i
                    self.size += 1

    def __dealloc__(self):
        free(self.hashes)
        free(self.rows)

    cdef inline bint _same_row(self, int32_t row, const uint32_t* p,
                               Py_ssize_t length) noexcept nogil:
        cdef const uint32_t* q = &self.points[row, 0]
        cdef Py_ssize_t i
        if length < self.width and q[length] != 0:
            return False
        for i in range(length):
            if q[i] != p[i]:
                return False
        return True

    cdef int64_t find(self, str s) except -2:
        """The row of `s`, or -1."""
        cdef Py_ssize_t length = PyUnicode_GET_LENGTH(s)
        cdef Py_ssize_t slot
        if length == 0 or length > self.width:
            return -1
        cdef uint64_t h = hash_str(s)
        slot = h & self.mask
        while self.rows[slot] >= 0:
            if self.hashes[slot] == h and self._same_str(self.rows[slot], s, length):
                return self.rows[slot]
            slot = (slot + 1) & self.mask
        return -1

    cdef inline bint _same_str(self, int32_t row, str s, Py_ssize_t length):
        cdef const uint32_t* q = &self.points[row, 0]
        cdef Py_ssize_t i
        if length < self.width and q[length] != 0:
            return False
        for i in range(length):
            if q[i] != <uint32_t>PyUnicode_READ_CHAR(s, i):
                return False
        return True

    def rows_of(self, list user_ids, int64_t unknown):
        """int64 rows of a batch's user ids; `unknown` for ids not in the table."""
        cdef Py_ssize_t n = len(user_ids), i
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef int64_t r
        for i in range(n):
            r = self.find(user_ids[i])
            o[i] = r if r >= 0 else unknown
        return out

    def get(self, str user_id, default=None):
        """Like dict.get: the row, or `default`."""
        cdef int64_t r = self.find(user_id)
        return r if r >= 0 else default

    def __len__(self):
        return self.size

    def __contains__(self, str user_id):
        return self.find(user_id) >= 0

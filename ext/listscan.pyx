# cython: language_level=3
"""Inverted-list search of a whole batch at once, list by list (adbid.stages.retrieval).

FAISS's IVF search scans each query's probed lists on its own: at 10^5 ads, 256
queries and a 32nd of the lists probed, every list is read from memory about eight
times a batch and scored one vector at a time. Here the batch's (query, list) pairs
are grouped by list, and each list is scored against all the queries that probe it
at once, so each list is read once a batch; a top-k heap per query keeps the best.
The candidates are those FAISS would scan, so the results are FAISS's (inner
product), ties aside.

Two kernels score a list. Where the CPU has AVX2 and FMA, the lists are kept in blocks
of 8 vectors, dimension-major (`to_blocks`), and listscan_kernel.h scores up to 8
queries against a block in registers, offering each query's 8 scores to its heap
with one compare (most beat nothing): 1.4x the other kernel at 10^5 ads. Elsewhere,
one matrix product a list (BLAS sgemm, from SciPy) into a buffer, then the heaps.
"""

from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport sgemm

import numpy as np


cdef extern from "listscan_kernel.h":
    int adbid_block_kernel_usable() nogil
    void adbid_scan_offer(const float* blocks, int n, int dim, const float* queries, int m,
                          const int64_t* ids, float** value, int64_t** ident, int k) nogil


def block_kernel_usable():
    """Can this CPU run the blocked kernel (AVX2 and FMA)? Else `search` takes rows."""
    return bool(adbid_block_kernel_usable())


def to_blocks(const float[:, ::1] vectors, const int64_t[::1] list_start):
    """The lists' vectors in blocks of 8, dimension-major (the blocked kernel's layout),
    each list padded with zero vectors to a whole block -> (blocks float32[NB, D * 8],
    block_start int64[L + 1]): list li's blocks at rows block_start[li] ..."""
    cdef Py_ssize_t n_lists = list_start.shape[0] - 1, dim = vectors.shape[1], li
    sizes = np.diff(np.asarray(list_start))
    block_start = np.concatenate([[0], np.cumsum((sizes + 7) // 8)]).astype(np.int64)
    nb = int(block_start[n_lists])
    blocks = np.zeros((nb * 8, dim), dtype=np.float32)
    rows = np.asarray(vectors)
    for li in range(n_lists):
        at = 8 * block_start[li]
        blocks[at:at + sizes[li]] = rows[list_start[li]:list_start[li + 1]]
    # (NB * 8, D) -> (NB, 8, D) -> (NB, D, 8): component t of the block's vector j at t*8+j
    out = np.ascontiguousarray(blocks.reshape(nb, 8, dim).transpose(0, 2, 1))
    return out.reshape(nb, dim * 8), block_start


cdef inline void heap_replace_top(float* value, int64_t* ident, int k, float s,
                                  int64_t i) noexcept nogil:
    """The root of a min-heap of k (the k-th best so far) gives way to (s, i)."""
    cdef int at = 0, child
    while True:
        child = 2 * at + 1
        if child >= k:
            break
        if child + 1 < k and value[child + 1] < value[child]:
            child += 1
        if value[child] >= s:
            break
        value[at] = value[child]
        ident[at] = ident[child]
        at = child
    value[at] = s
    ident[at] = i


cdef inline void offer(const float* score, const int64_t* ids, int n, float* value,
                       int64_t* ident, int k) noexcept nogil:
    """Scores of one list for one query into its heap; four at a time past the
    threshold, which most of them do not beat."""
    cdef int j = 0, t
    cdef float floor_ = value[0]
    while j + 4 <= n:
        if score[j] > floor_ or score[j + 1] > floor_ or score[j + 2] > floor_ \
                or score[j + 3] > floor_:
            for t in range(j, j + 4):
                if score[t] > value[0]:
                    heap_replace_top(value, ident, k, score[t], ids[t])
            floor_ = value[0]
        j += 4
    while j < n:
        if score[j] > value[0]:
            heap_replace_top(value, ident, k, score[j], ids[j])
        j += 1


def search(const float[:, ::1] queries, const int64_t[:, ::1] probes,
           const float[:, ::1] vectors, const int64_t[::1] list_start,
           const int64_t[::1] ids, int k, const float[:, ::1] blocks=None,
           const int64_t[::1] block_start=None):
    """queries float32[B, D]; probes int64[B, P], the lists each query scans (-1: none);
    vectors float32[N, D], the lists' vectors one list after the other, list li's at rows
    list_start[li] .. list_start[li + 1] - 1; ids int64[N], each vector's id. With
    `blocks`, `block_start` (to_blocks; needs block_kernel_usable()) the vectors are read
    from those instead, and `vectors` may be an empty [0, D] array.
    -> (scores float32[B, k], ids int64[B, k]), best first; -inf and -1 past the found."""
    cdef Py_ssize_t n_queries = queries.shape[0], n_probes = probes.shape[1]
    cdef int dim = queries.shape[1]
    cdef Py_ssize_t n_lists = list_start.shape[0] - 1
    cdef bint blocked = blocks is not None
    if blocked and (block_start is None or block_start.shape[0] != n_lists + 1
                    or blocks.shape[1] != dim * 8 or not adbid_block_kernel_usable()):
        raise ValueError("listscan.search: blocks need block_start, D * 8 columns and AVX2")
    if vectors.shape[1] != dim or probes.shape[0] != n_queries \
            or (not blocked and ids.shape[0] != vectors.shape[0]):
        raise ValueError("listscan.search: shapes do not agree")
    if k < 1:
        raise ValueError(f"listscan.search: k must be >= 1, got {k}")
    best = np.full((n_queries, k), -np.inf, dtype=np.float32)
    best_id = np.full((n_queries, k), -1, dtype=np.int64)
    cdef float[:, ::1] value = best
    cdef int64_t[:, ::1] ident = best_id
    # (query, list) pairs grouped by list: list li's queries at by_list[first[li]:first[li + 1]].
    first_ = np.zeros(n_lists + 1, dtype=np.int64)
    by_list_ = np.empty(n_queries * n_probes, dtype=np.int64)
    cdef int64_t[::1] first = first_
    cdef int64_t[::1] by_list = by_list_
    cdef Py_ssize_t b, p, li, i
    cdef int64_t most_queries = 0, longest = 0
    for b in range(n_queries):
        for p in range(n_probes):
            li = probes[b, p]
            if li >= n_lists:
                raise ValueError(f"listscan.search: list {li} of {n_lists}")
            if li >= 0:
                first[li + 1] += 1
    for li in range(n_lists):
        most_queries = max(most_queries, first[li + 1])
        longest = max(longest, list_start[li + 1] - list_start[li])
        first[li + 1] += first[li]
    fill_ = first_[:n_lists].copy()
    cdef int64_t[::1] fill = fill_
    for b in range(n_queries):
        for p in range(n_probes):
            li = probes[b, p]
            if li >= 0:
                by_list[fill[li]] = b
                fill[li] += 1
    if most_queries == 0 or longest == 0:
        return best, best_id
    cdef float* gathered = <float*> malloc(most_queries * dim * sizeof(float))
    # The rows kernel's products; the blocked kernel's heap pointers, one a query.
    cdef float* scores = NULL if blocked else <float*> malloc(most_queries * longest
                                                              * sizeof(float))
    cdef float** heap_value = <float**> malloc(most_queries * sizeof(float*))
    cdef int64_t** heap_ident = <int64_t**> malloc(most_queries * sizeof(int64_t*))
    if gathered == NULL or (scores == NULL and not blocked) or heap_value == NULL \
            or heap_ident == NULL:
        free(gathered)
        free(scores)
        free(heap_value)
        free(heap_ident)
        raise MemoryError()
    cdef int m, n
    cdef float one = 1.0, zero = 0.0
    cdef char trans = b'T', keep = b'N'
    with nogil:
        for li in range(n_lists):
            m = <int> (first[li + 1] - first[li])
            n = <int> (list_start[li + 1] - list_start[li])
            if m == 0 or n == 0:
                continue
            for i in range(m):
                memcpy(gathered + i * dim, &queries[by_list[first[li] + i], 0],
                       dim * sizeof(float))
            if blocked:  # each score offered to its query's heap as it is made
                for i in range(m):
                    b = by_list[first[li] + i]
                    heap_value[i] = &value[b, 0]
                    heap_ident[i] = &ident[b, 0]
                adbid_scan_offer(&blocks[block_start[li], 0], n, dim, gathered, m,
                                 &ids[list_start[li]], heap_value, heap_ident, k)
                continue
            # Column-major: scores (n x m) = vectors_l^T' (n x dim) . gathered (dim x m), so
            # query i's n scores lie at scores[i * n].
            sgemm(&trans, &keep, &n, &m, &dim, &one, <float*> &vectors[list_start[li], 0],
                  &dim, gathered, &dim, &zero, scores, &n)
            for i in range(m):
                b = by_list[first[li] + i]
                offer(scores + i * n, &ids[list_start[li]], n, &value[b, 0], &ident[b, 0], k)
    free(gathered)
    free(scores)
    free(heap_value)
    free(heap_ident)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), np.take_along_axis(best_id, order, axis=1)

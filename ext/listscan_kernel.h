/* Inner products of a few queries against one inverted list stored in blocks of 8
 * vectors, dimension-major (block b holds vector 8b + j's component t at [t * 8 + j]):
 * each query's component is broadcast and multiplied into 8 vectors at once, so no
 * horizontal sums are needed. AVX2 + FMA, chosen at run time (adbid.stages.retrieval
 * falls back to BLAS's sgemm on rows without them). */
#ifndef ADBID_LISTSCAN_KERNEL_H
#define ADBID_LISTSCAN_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ADBID_HAVE_BLOCK_KERNEL 1

static int adbid_block_kernel_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* The root of a min-heap of k (the k-th best so far) gives way to (s, id). */
static inline void adbid_heap_replace_top(float* value, int64_t* ident, int k, float s,
                                          int64_t id) {
    int at = 0;
    for (;;) {
        int child = 2 * at + 1;
        if (child >= k) break;
        if (child + 1 < k && value[child + 1] < value[child]) child++;
        if (value[child] >= s) break;
        value[at] = value[child];
        ident[at] = ident[child];
        at = child;
    }
    value[at] = s;
    ident[at] = id;
}

/* 8 scores of one query (vectors 8b .. 8b + 7 of a list of n) into its heap: one compare
 * against the heap's k-th best decides for all 8, which most do not beat. */
__attribute__((target("avx2,fma")))
static inline void adbid_offer8(__m256 s, int b, int n, const int64_t* ids, float* value,
                                int64_t* ident, int k) {
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_set1_ps(value[0]), _CMP_GT_OQ));
    if (!mask) return;
    float tmp[8];
    _mm256_storeu_ps(tmp, s);
    while (mask) {
        int j = __builtin_ctz(mask);
        mask &= mask - 1;
        int at = 8 * b + j;
        if (at < n && tmp[j] > value[0])
            adbid_heap_replace_top(value, ident, k, tmp[j], ids[at]);
    }
}

/* Every block of a list of n vectors against m queries, each query's scores offered to its
 * own top-k heap (value[i], ident[i]) as they are made. */
__attribute__((target("avx2,fma")))
static void adbid_scan_offer(const float* blocks, int n, int dim, const float* queries, int m,
                             const int64_t* ids, float* const* value, int64_t* const* ident,
                             int k) {
    int nblocks = (n + 7) / 8;
    for (int b = 0; b < nblocks; b++) {
        const float* B = blocks + (size_t)b * dim * 8;
        int i = 0;
        for (; i + 8 <= m; i += 8) {
            const float* q = queries + (size_t)i * dim;
            __m256 a[8];
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int t = 0; t < dim; t++) {
                __m256 v = _mm256_loadu_ps(B + (size_t)t * 8);
                for (int r = 0; r < 8; r++)
                    a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + (size_t)r * dim + t), v,
                                           a[r]);
            }
            for (int r = 0; r < 8; r++)
                adbid_offer8(a[r], b, n, ids, value[i + r], ident[i + r], k);
        }
        for (; i + 4 <= m; i += 4) {
            const float* q0 = queries + (size_t)i * dim;
            const float* q1 = q0 + dim;
            const float* q2 = q1 + dim;
            const float* q3 = q2 + dim;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int t = 0; t < dim; t++) {
                __m256 v = _mm256_loadu_ps(B + (size_t)t * 8);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q0 + t), v, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(q1 + t), v, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(q2 + t), v, a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(q3 + t), v, a3);
            }
            adbid_offer8(a0, b, n, ids, value[i], ident[i], k);
            adbid_offer8(a1, b, n, ids, value[i + 1], ident[i + 1], k);
            adbid_offer8(a2, b, n, ids, value[i + 2], ident[i + 2], k);
            adbid_offer8(a3, b, n, ids, value[i + 3], ident[i + 3], k);
        }
        for (; i < m; i++) {
            const float* q0 = queries + (size_t)i * dim;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int t = 0;
            for (; t + 2 <= dim; t += 2) {
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q0 + t),
                                     _mm256_loadu_ps(B + (size_t)t * 8), a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(q0 + t + 1),
                                     _mm256_loadu_ps(B + (size_t)(t + 1) * 8), a1);
            }
            for (; t < dim; t++)
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q0 + t),
                                     _mm256_loadu_ps(B + (size_t)t * 8), a0);
            adbid_offer8(_mm256_add_ps(a0, a1), b, n, ids, value[i], ident[i], k);
        }
    }
}
#else
#define ADBID_HAVE_BLOCK_KERNEL 0
static void adbid_scan_offer(const float* blocks, int n, int dim, const float* queries, int m,
                             const int64_t* ids, float* const* value, int64_t* const* ident,
                             int k) {
    (void)blocks; (void)n; (void)dim; (void)queries; (void)m; (void)ids; (void)value;
    (void)ident; (void)k;
}
static int adbid_block_kernel_usable(void) { return 0; }
static void adbid_scan_blocks(const float* blocks, int nblocks, int dim,
                              const float* queries, int m, float* scores, int ld) {
    (void)blocks; (void)nblocks; (void)dim; (void)queries; (void)m; (void)scores; (void)ld;
}
#endif

#endif

"""This thread's floating-point mode: subnormal numbers flushed to zero.

On x86 it sets the MXCSR register's flush-to-zero and denormals-are-zero bits, which
are per thread. Intel cores take a microcode assist, around a hundred cycles, for each
operation whose input or result is subnormal (below 1.2e-38 in float32); AMD cores
mostly do not. The demo model's first layer turns about 6% of its outputs subnormal
(weights of 1e-30 and less, left by training's weight decay, times inputs near 1e-3).
Nothing a click probability can show is lost by reading those as 0.
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(__i386__)
    #include <xmmintrin.h>
    #define ADBID_FTZ_DAZ 0x8040u
    static int adbid_fp_set_flush(int on) {
        unsigned int c = _mm_getcsr();
        _mm_setcsr(on ? (c | ADBID_FTZ_DAZ) : (c & ~ADBID_FTZ_DAZ));
        return 1;
    }
    static int adbid_fp_flushing(void) { return (_mm_getcsr() & ADBID_FTZ_DAZ) == ADBID_FTZ_DAZ; }
    #else
    static int adbid_fp_set_flush(int on) { (void)on; return 0; }
    static int adbid_fp_flushing(void) { return 0; }
    #endif
    """
    int adbid_fp_set_flush(int on) nogil
    int adbid_fp_flushing() nogil


def flush_denormals(bint on=True) -> bool:
    """Flush subnormal floats to zero on the calling thread (or stop, with on=False).
    Returns False where this CPU family is not supported (then nothing changes)."""
    return adbid_fp_set_flush(on) != 0


def denormals_flushed() -> bool:
    """Whether the calling thread flushes subnormal floats to zero."""
    return adbid_fp_flushing() != 0

"""Subnormal floats flushed to zero on the threads that run retrieval and scoring."""

import platform
import threading

import numpy as np
import pytest

from adbid._fpmode import denormals_flushed, flush_denormals

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64", "i686"),
                                reason="the flush is built for x86 only (elsewhere a no-op)")


def product() -> float:
    """1e-30 * 1e-10 in float32: 1e-40 is subnormal, or 0 where the thread flushes."""
    return float((np.full(4, 1e-30, np.float32) * np.float32(1e-10))[0])


def on_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_flushing_is_per_thread_and_reversible():
    def flush_then_measure():
        before = product(), denormals_flushed()
        assert flush_denormals()
        during = product(), denormals_flushed()
        flush_denormals(False)
        return before, during, (product(), denormals_flushed())

    before, during, after = on_new_thread(flush_then_measure)
    assert before[0] > 0 and not before[1]
    assert during == (0.0, True)
    assert after[0] > 0 and not after[1]
    assert product() > 0  # this thread never flushed


def test_native_threads_of_a_serving_pipeline_flush(server):
    executor = server.server.pipeline.executor
    results = [executor.submit(lambda: (product(), denormals_flushed())) for _ in range(8)]
    assert {f.result() for f in results} == {(0.0, True)}
    assert product() > 0  # threads outside the executor keep IEEE arithmetic

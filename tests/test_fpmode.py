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


def test_small_batches_run_on_the_loop_thread_flushed_and_decide_the_same(tiny_world):
    """Batches of at most --inline-events run retrieval and scoring on the event loop's
    thread: flushed while they run, the thread's own mode back after, and the same
    decisions as handing them to a native thread."""
    import asyncio
    from dataclasses import replace

    from adbid.config import ServerConfig
    from adbid.edge.decode import decode_request
    from adbid.flow.deadlines import Timekeeper
    from adbid.money.ledger import SpendLedger
    from adbid.stages.pipeline import Pipeline, WorldStages
    from adbid.v1 import bidder_pb2 as pb
    from adbid.world.demo_traffic import make_events

    rng = np.random.default_rng(9)
    batches = [make_events(n, rng, n_users=2_000, test=True, id_prefix=f"f{i}-")
               for i, n in enumerate((1, 5, 16, 40))]

    async def run(inline: int):
        cfg = replace(ServerConfig(world=tiny_world.path, ledger=None), inline_events=inline)
        p = Pipeline(WorldStages(tiny_world, cfg), cfg, SpendLedger(tiny_world.campaigns, None))
        seen: list[tuple[bool, bool]] = []
        native = p._native

        def spy(*args):  # which thread, and flushing or not, while retrieval runs
            seen.append((threading.current_thread() is threading.main_thread(),
                         denormals_flushed()))
            return native(*args)

        p._native = spy
        keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)
        out = []
        for events in batches:
            dec, _ = await p.run(decode_request(pb.BidRequest(events=events)),
                                 keeper.unbounded(learn=False))
            out.append((dec.bid.tolist(), dec.ad_row.tolist(), dec.price_cpm_micros.tolist()))
        p.close()
        return out, seen

    inline, seen_inline = asyncio.run(run(16))
    handed, seen_handed = asyncio.run(run(0))
    assert inline == handed
    assert seen_inline == [(True, True)] * 3 + [(False, True)]  # 40 events > 16: handed off
    assert seen_handed == [(False, True)] * 4
    assert product() > 0 and not denormals_flushed()  # this thread's mode is its own again

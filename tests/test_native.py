"""Where retrieval and scoring run: a large batch alone in the pipeline is split over the
native threads, and decides exactly as it would on one."""

import asyncio
import threading
from dataclasses import replace
from itertools import pairwise

import numpy as np

from adbid.config import ServerConfig
from adbid.edge.decode import decode_request
from adbid.flow.deadlines import Timekeeper
from adbid.money.ledger import SpendLedger
from adbid.stages.native import parts, within_part
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events


def test_parts_cover_the_batch_once_and_only_above_the_threshold():
    assert parts(100, 2, 64) == [slice(0, 50), slice(50, 100)]
    assert parts(63, 2, 64) == [slice(0, 63)]  # under --split-events
    assert parts(100, 1, 64) == [slice(0, 100)]  # one thread (or others busy)
    assert parts(100, 2, 0) == [slice(0, 100)]  # 0: never
    for n, threads in ((64, 2), (101, 3), (257, 4)):
        cut = parts(n, threads, 64)
        assert len(cut) == threads and cut[0].start == 0 and cut[-1].stop == n
        assert all(a.stop == b.start for a, b in pairwise(cut))
    ads = np.array([3, 4])
    assert within_part([(10, ads), (60, ads)], slice(50, 100)) == [(10, ads)]


def test_a_batch_alone_is_split_and_decides_as_on_one_thread(tiny_world):
    rng = np.random.default_rng(11)
    batches = [make_events(n, rng, n_users=2_000, test=True, id_prefix=f"s{i}-")
               for i, n in enumerate((200, 130, 90))]

    async def run(split: int, together: bool):
        cfg = replace(ServerConfig(world=tiny_world.path, ledger=None), split_events=split,
                      inline_events=16, native_threads=2)
        p = Pipeline(WorldStages(tiny_world, cfg), cfg, SpendLedger(tiny_world.campaigns, None))
        calls: list[tuple[int, bool]] = []  # (events, on the loop's thread) a native call
        native = p._native

        def spy(query, *args):
            calls.append((len(query), threading.current_thread() is threading.main_thread()))
            return native(query, *args)

        p._native = spy
        keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)

        async def one(events):
            dec, _ = await p.run(decode_request(pb.BidRequest(events=events)),
                                 keeper.unbounded(learn=False))
            return dec.bid.tolist(), dec.ad_row.tolist(), dec.price_cpm_micros.tolist()

        if together:  # the first batch alone when it reaches retrieval, the others not
            out = await asyncio.gather(*(one(e) for e in batches))
        else:
            out = [await one(e) for e in batches]
        p.close()
        return out, calls

    whole, calls_whole = asyncio.run(run(0, False))
    split, calls_split = asyncio.run(run(64, False))
    assert split == whole
    assert sorted(calls_whole) == [(90, False), (130, False), (200, False)]
    # The first part on the event loop's thread, the other on a native thread.
    assert sorted(calls_split) == sorted([(100, True), (100, False), (65, True), (65, False),
                                          (45, True), (45, False)])
    assert any(d[0].count(True) for d in split)  # the batches did bid

    # Decided in another order, so against other budgets' states: only where they ran.
    _, calls_together = asyncio.run(run(64, True))
    assert sorted(calls_together) == [(90, False), (100, False), (100, True), (130, False)]

"""Where a batch's retrieval and scoring run, and how a batch is split to run on all the
native threads at once.

A batch of at most `--inline-events` runs them on the event loop's own thread, with
subnormal floats flushed as on the native threads (the hand-off would cost more than it
overlaps). A larger one runs on a native thread, so that batches overlap. A batch of at
least `--split-events` that finds no other batch in the pipeline is cut into one part a
native thread, the parts retrieved and scored at once, the first on the event loop's
thread (waiting for its batch, it would idle; one hand-off fewer) and the others on
native threads: cores that would otherwise idle work on it, and its answer comes sooner
(at one caller, a batch of 256 on the demo world: 2.4 ms of retrieval and scoring on one
thread, 1.4 ms in two halves on two). A batch arriving meanwhile waits for the event
loop at most that long, and would have waited for a native thread anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from adbid._fpmode import denormals_flushed, flush_denormals


class NativeWork(NamedTuple):
    """What retrieval and scoring of a batch (or of a part of it) gave, and their times."""

    cand_ad: np.ndarray  # int64[B, K] ad rows
    score: np.ndarray  # float32[B, K]
    queued_s: float  # waited for a native thread
    retrieval_s: float
    scoring_s: float
    done: float  # perf_counter() when it finished


@contextmanager
def flushed() -> Iterator[None]:
    """Subnormal floats flushed to zero for the block, as on the native threads; the
    thread's mode restored after."""
    was = denormals_flushed()
    if not was:
        flush_denormals(True)
    try:
        yield
    finally:
        if not was:
            flush_denormals(False)


def parts(n: int, threads: int, split_events: int) -> list[slice]:
    """The parts a batch of n events is cut into for `threads` idle threads: one part a
    thread when n reaches split_events (0: never), else the whole batch."""
    if threads < 2 or split_events <= 0 or n < max(split_events, threads):
        return [slice(0, n)]
    cuts = np.linspace(0, n, threads + 1).astype(int).tolist()
    return [slice(a, b) for a, b in pairwise(cuts)]


def within_part(within: Sequence[tuple[int, np.ndarray]],
                part: slice) -> list[tuple[int, np.ndarray]]:
    """The events searched among given ads (position, ad rows) that fall in this part,
    their positions counted from its start."""
    return [(i - part.start, ads) for i, ads in within if part.start <= i < part.stop]


def merged(works: Sequence[NativeWork]) -> NativeWork:
    """The parts' results end to end. The stage times are summed, so the cost model keeps
    learning what the work costs on one thread (what it costs when batches overlap)."""
    if len(works) == 1:
        return works[0]
    return NativeWork(np.concatenate([w.cand_ad for w in works]),
                      np.concatenate([w.score for w in works]),
                      max(w.queued_s for w in works), sum(w.retrieval_s for w in works),
                      sum(w.scoring_s for w in works), max(w.done for w in works))

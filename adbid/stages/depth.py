"""Targeting inside retrieval: a second look for the events that their top K fails.

After the decision, an event refused for a reason that a later candidate may pass
(targeting, a publisher block, the floor, a frequency cap) is searched K x overfetch
deep; the candidates it has tried are left out, and the next K that its targeting admits
(campaign active, country, device, slot size, site allow list: the decision loop's own
tests, vectorised) are scored and decided; an event refused again gets one more look,
the next K of the same search. Only those events pay for it (a few in a hundred on the
demo traffic). No reservation exists for a refused event, so deciding it again books
nothing twice.

Measured against searching the events that admit few of their top K again before scoring
(the earlier design): the same share of events bid, at a third of the added retrieval
cost (docs/performance.md).
"""

from __future__ import annotations

import time

import numpy as np

from adbid import metrics
from adbid.money.ledger import SpendLedger
from adbid.stages.batch import EventBatch
from adbid.stages.decision import Decisions
from adbid.stages.retrieval import Retriever, admissible, site_allow_keys
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World

# No-bid reasons about the candidates an event was shown, not about the event or the
# campaigns' money: a deeper candidate may pass where these failed.
CANDIDATE_REASONS = np.array([pb.NO_BID_REASON_TARGETING, pb.NO_BID_REASON_BLOCKED,
                              pb.NO_BID_REASON_BELOW_FLOOR, pb.NO_BID_REASON_FREQUENCY_CAP],
                             dtype=np.int32)


class DeeperSearch:
    """The world's retriever and targeting tests, for the events the top K fails."""

    def __init__(self, retriever: Retriever, world: World, ledger: SpendLedger,
                 top_k: int, overfetch: int) -> None:
        self.retriever, self.world, self.ledger = retriever, world, ledger
        self.depth = top_k * overfetch
        self.enabled = overfetch > 1
        self._site_keys = site_allow_keys(world.campaigns)
        self.second_look_s = 0.0  # time spent finding second looks' candidates

    def _admissible(self, cand: np.ndarray, batch: EventBatch,
                    rows: np.ndarray | None = None) -> np.ndarray:
        world = self.world
        return admissible(cand, world.ad_campaign, self.ledger.active, world.campaigns, batch,
                          rows, self._site_keys)

    def retry_rows(self, dec: Decisions, blocked: np.ndarray,
                   within: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """The events worth a second look: refused for one of CANDIDATE_REASONS, not
        blocked (invalid, retried), not limited to a private auction's deals."""
        again = ~dec.bid & np.isin(dec.reason, CANDIDATE_REASONS) & ~blocked
        again[[i for i, _ in within]] = False
        return np.flatnonzero(again)

    def next_candidates(self, query: np.ndarray, batch: EventBatch, rows: np.ndarray,
                        tried: np.ndarray, k: int,
                        searched: tuple[np.ndarray, ...] | None = None
                        ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """int64[B, k]: for each event in `rows`, the first k admitted ads of a deeper
        search that are not among its `tried` candidates (int64[B, any]), -1 padded; -1 for
        every other event. `searched`: an earlier look's deeper search (its rows, the ads
        found and which of them targeting admits), which these rows are among: searched
        once, looked at again. Returned for the next look."""
        t0 = time.perf_counter()
        metrics.SECOND_LOOKS.inc(len(rows))
        out = np.full((len(batch), k), -1, dtype=np.int64)
        if searched is None:
            found = self.retriever.search(query[rows], k=self.depth)
            searched = (rows, found, self._admissible(found, batch, rows))
        at = np.searchsorted(searched[0], rows)
        wide = searched[1][at]
        ok = searched[2][at] & ~(wide[:, :, None] == tried[rows][:, None, :]).any(axis=2)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        out[rows] = np.where(np.take_along_axis(ok, order, axis=1),
                             np.take_along_axis(wide, order, axis=1), -1)
        self.second_look_s += time.perf_counter() - t0
        return out, searched

"""Decision stage: the Python facade over the compiled decision core.

It owns conversion and allocation: arrays go to the core C-contiguous with
explicit dtypes, outputs are allocated here, and the core's integer error code
is raised here, with the GIL held.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from adbid import _decision
from adbid.money.ledger import Reservation, SpendLedger
from adbid.stages.batch import EventBatch
from adbid.world.campaigns import CampaignTable

_ERRORS = {1: "an ad points at a campaign row outside the campaign table"}
ANSWERED_BEFORE = -2  # Decisions.candidate of a retried bid


@dataclass
class Decisions:
    """One entry per event, in request order."""

    bid: np.ndarray  # bool[B]
    # int32[B], chosen column of cand_ad; -1 = no bid; ANSWERED_BEFORE = a retried request's
    # bid, answered as the first time (its reservation belongs to that first answer)
    candidate: np.ndarray
    ad_row: np.ndarray  # int64[B], -1 = no bid
    campaign_row: np.ndarray  # int32[B], -1 = no bid
    price_cpm_micros: np.ndarray  # int64[B]
    value_cpm_micros: np.ndarray  # int64[B]
    # float32[B], model P(intent) of the chosen candidate; for a no-bid, of the best rejected
    # candidate (the one value_cpm_micros describes), 0 when there was none
    score: np.ndarray
    reason: np.ndarray  # int32[B], adbid.v1.NoBidReason

    def part(self, start: int, stop: int) -> Decisions:
        """Events start..stop-1 of these decisions (views, not copies)."""
        return Decisions(*(getattr(self, f.name)[start:stop] for f in fields(self)))

    def take(self, positions: list[int]) -> Decisions:
        """These events' decisions, in this order (copies)."""
        return Decisions(*(getattr(self, f.name)[positions] for f in fields(self)))


class DecisionCore:
    """Runs the compiled core over a batch against the campaigns, the ledger and the
    frequency table; the only writer of reservations and frequency counts."""

    def __init__(self, campaigns: CampaignTable, ad_campaign: np.ndarray, ledger: SpendLedger,
                 shading: float, frequency_slots: int = 1 << 20,
                 frequency: _decision.FrequencyTable | None = None) -> None:
        if not 0.0 < shading <= 1.0:
            raise ValueError(f"shading must be in (0, 1], got {shading}")
        self.campaigns = campaigns
        self.ad_campaign = np.ascontiguousarray(ad_campaign, dtype=np.int32)
        self.ledger = ledger
        self.shading = float(shading)
        # Shared across reloads: counters are keyed by (user, campaign row), and rows only grow.
        self.frequency = frequency or _decision.FrequencyTable(frequency_slots)
        # Written by the pacing controller; 1.0 = no throttling.
        self.pacing = np.ones(len(campaigns), dtype=np.float64)
        # With shared budgets: frequency counts this process adds or gives back, as
        # (user keys, campaign rows, delta), for adbid.money.shared to push to Redis.
        self.counted: list[tuple[np.ndarray, np.ndarray, int]] | None = None

    def decide(self, batch: EventBatch, cand_ad: np.ndarray, score: np.ndarray,
               blocked: np.ndarray | None = None, now_s: int = 0,
               shading: np.ndarray | None = None) -> Decisions:
        """cand_ad int64[B, K] ad rows (-1 = none), score float32[B, K] P(intent).

        The batch must have been resolved (adbid.stages.lookup.resolve). `blocked`
        bool[B]: events that must not bid (invalid ones); they get no candidates
        and hence no reservation, and the caller sets their reason. `now_s`:
        Unix seconds, for frequency windows. `shading`: float64[B], each event's
        first-price factor (a shading policy's), instead of the one constant.
        """
        n = len(batch)
        cand_ad = np.ascontiguousarray(cand_ad, dtype=np.int64)
        score = np.ascontiguousarray(score, dtype=np.float32)
        if cand_ad.shape != score.shape or cand_ad.ndim != 2 or len(cand_ad) != n:
            raise ValueError(f"cand_ad {cand_ad.shape} and score {score.shape} for {n} events")
        if batch.site_id is None:
            raise ValueError("batch not resolved: call adbid.stages.lookup.resolve first")
        if blocked is not None and blocked.any():
            cand_ad = cand_ad.copy()
            cand_ad[blocked] = -1
        out = Decisions(bid=np.empty(0, bool), candidate=np.empty(n, np.int32),
                        ad_row=np.empty(0, np.int64), campaign_row=np.empty(0, np.int32),
                        price_cpm_micros=np.empty(n, np.int64),
                        value_cpm_micros=np.empty(n, np.int64), score=np.empty(0, np.float32),
                        reason=np.empty(n, np.int32))
        err = _decision.decide_batch(cand_ad, score, batch, self.campaigns, self.ad_campaign,
                                     self.pacing, self.ledger, self.frequency, now_s,
                                     self.shading, out,
                                     None if shading is None else
                                     np.ascontiguousarray(shading, dtype=np.float64))
        if err:
            raise RuntimeError(f"decision core: {_ERRORS.get(err, f'error {err}')}")
        bid = out.candidate >= 0
        rows = np.arange(n)
        # A no-bid's candidate is -2 - k when column k held the best rejected candidate:
        # its score goes out beside its value (both describe it), then -1 marks the no-bid.
        rejected = out.candidate <= -2
        k = np.where(bid, out.candidate, np.where(rejected, -2 - out.candidate, 0))
        ad_row = np.where(bid, cand_ad[rows, k] if n else np.empty(0, np.int64), -1)
        campaign_row = np.where(bid, self.ad_campaign[np.maximum(ad_row, 0)], -1).astype(np.int32)
        chosen_score = np.where(bid | rejected, score[rows, k] if n else np.empty(0, np.float32),
                                0.0)
        np.maximum(out.candidate, -1, out=out.candidate)
        out.bid, out.ad_row, out.campaign_row = bid, ad_row, campaign_row
        # (A NaN score is worth 0: never a bid, never the best rejected candidate.)
        out.score = chosen_score.astype(np.float32)
        if self.counted is not None:  # what the core counted: live bids of capped campaigns
            c = bid & (batch.is_test == 0) & (self.campaigns.freq_cap[np.maximum(campaign_row,
                                                                               0)] > 0)
            if c.any():
                assert batch.user_key is not None
                self.counted.append((batch.user_key[c].copy(), campaign_row[c], 1))
        return out

    def release_frequency(self, res: Reservation, now_s: int) -> None:
        """Give back the frequency count of a bid that lost its auction."""
        row = res.campaign_row
        if self.campaigns.freq_cap[row] > 0:
            self.frequency.add(res.user_key & 0xFFFF_FFFF_FFFF_FFFF, row, now_s,
                               int(self.campaigns.freq_window_s[row]), -1)
            if self.counted is not None:
                self.counted.append((np.array([res.user_key & 0xFFFF_FFFF_FFFF_FFFF],
                                              np.uint64), np.array([row], np.int32), -1))

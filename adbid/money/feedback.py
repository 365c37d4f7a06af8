"""What the market said about our bids: for each notice, the bid, whether it won, the
price it cleared at or the lowest bid that would have won (OpenRTB's
${AUCTION_MIN_TO_WIN}), and the loss reason (${AUCTION_LOSS}).

Kept in memory, bounded (the most recent `capacity`), for bid shading to learn from;
summed per campaign; exported as metrics. Not durable: a restart starts afresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from adbid import metrics


class Observation(NamedTuple):
    campaign_row: int
    bid_cpm_micros: int
    won: bool
    price_cpm_micros: int  # won: the clearing price; lost: the minimum to win (0 = not given)
    loss_reason: int  # OpenRTB loss reason code; 0 = not given (or a win)
    unix_ms: int


@dataclass
class CampaignMarket:
    wins: int = 0
    losses: int = 0
    losses_with_min_to_win: int = 0
    min_to_win_over_bid: float = 0.0  # sum of min_to_win / bid over those losses


class MarketFeedback:
    def __init__(self, capacity: int = 100_000) -> None:
        self.recent: deque[Observation] = deque(maxlen=capacity)
        self.campaigns: dict[int, CampaignMarket] = {}

    def record(self, obs: Observation) -> None:
        self.recent.append(obs)
        c = self.campaigns.setdefault(obs.campaign_row, CampaignMarket())
        if obs.won:
            c.wins += 1
            return
        c.losses += 1
        metrics.LOSSES.labels(str(obs.loss_reason)).inc()
        if obs.price_cpm_micros > 0 and obs.bid_cpm_micros > 0:
            ratio = obs.price_cpm_micros / obs.bid_cpm_micros
            c.losses_with_min_to_win += 1
            c.min_to_win_over_bid += ratio
            metrics.MIN_TO_WIN_RATIO.observe(ratio)

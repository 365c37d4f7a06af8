"""First-price bid shading policies: the factor on value each event is bid at.

A market per segment (the publisher's site and the slot size): the highest competing bid
m is taken as log-normal, ln m ~ N(mu, sigma). For a value v the bid that maximises the
expected surplus (v - b) * P(m <= b) = (v - b) * Phi((ln b - mu) / sigma) over [floor, v]
is found by golden-section search on ln b (the surplus is unimodal there), for a whole
batch at once. The decision core then bids value x factor, factor = b* / v, per event
(DecisionCore.decide's `shading`): its hot loop is unchanged.

`LearnedShading` estimates each segment's (mu, sigma) online from what the exchange says
after first-price auctions (the minimum bid to win: the highest other bid, won or lost);
until a segment has `min_samples`, it bids the fixed factor. `KnownMarket` is handed the
true parameters (the simulator's oracle). The value each event is shaded for is its best
candidate's, as the core values it (P(intent) x value per action x pacing).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import ndtr  # the normal CDF (scipy comes with scikit-learn)

_PHI = (math.sqrt(5) - 1) / 2


def optimal_bids(value: np.ndarray, floor: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                 iterations: int = 40) -> np.ndarray:
    """argmax over b in [max(floor, 1), value] of (value - b) * Phi((ln b - mu) / sigma);
    float64 arrays of one length. Where value <= floor, the floor."""
    lo = np.log(np.maximum(floor, 1.0))
    hi = np.log(np.maximum(value, np.exp(lo)))

    def surplus(x: np.ndarray) -> np.ndarray:
        return (value - np.exp(x)) * ndtr((x - mu) / sigma)

    a, b = lo.copy(), hi.copy()
    c, d = b - _PHI * (b - a), a + _PHI * (b - a)
    fc, fd = surplus(c), surplus(d)
    for _ in range(iterations):
        left = fc >= fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c, d = b - _PHI * (b - a), a + _PHI * (b - a)
        fc, fd = surplus(c), surplus(d)
    return np.exp((a + b) / 2)


def best_values(cand_ad: np.ndarray, score: np.ndarray, ad_campaign: np.ndarray,
                value_per_action: np.ndarray, pacing: np.ndarray,
                bonus: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """float64[B] twice: the highest candidate value per event, CPM micros, as the core
    values it (1000 x P(intent) x value per action x pacing; 0 with no candidate), and
    the value a shading policy maximises surplus for: the same candidate's with `bonus`
    micros added to its value per action (equal to the first when the bonus is 0)."""
    c = ad_campaign[np.maximum(cand_ad, 0)]
    v = 1000.0 * score.astype(np.float64) * value_per_action[c] * pacing[c]
    v[cand_ad < 0] = 0.0
    v = np.nan_to_num(v, nan=0.0)
    if v.shape[1] == 0:
        return np.zeros(len(v)), np.zeros(len(v))
    best = v.argmax(axis=1)
    rows = np.arange(len(v))
    value = np.maximum(v[rows, best], 0.0)
    if not bonus:
        return value, value
    vpa = value_per_action[c[rows, best]]
    return value, value * (vpa + bonus) / np.maximum(vpa, 1.0)


class SegmentMarkets:
    """Per segment (site, size) the log-normal parameters of the highest competing bid."""

    def __init__(self, fixed: float) -> None:
        self.fixed = fixed
        self.index: dict[tuple[str, int], int] = {}
        self.mu = np.zeros(0)
        self.sigma = np.ones(0)
        self.known = np.zeros(0, bool)

    def segment(self, site: str, size: int) -> int:
        i = self.index.get((site, size))
        if i is None:
            i = self.index[site, size] = len(self.index)
            self.mu, self.sigma = np.append(self.mu, 0.0), np.append(self.sigma, 1.0)
            self.known = np.append(self.known, False)
        return i

    def segments(self, sites: list[str], sizes: np.ndarray) -> np.ndarray:
        return np.fromiter((self.segment(s, int(z)) for s, z in zip(sites, sizes)), np.int64,
                           count=len(sites))

    def factors(self, segs: np.ndarray, value: np.ndarray, floor: np.ndarray,
                target: np.ndarray | None = None) -> np.ndarray:
        """float64[B] first-price factors: b* / value where the segment is known and the
        value positive, else the fixed factor. b* maximises the surplus for `target`
        (default: the value itself); the factor never exceeds 1 (never above value)."""
        target = value if target is None else target
        out = np.full(len(segs), self.fixed)
        use = self.known[segs] & (value > 0)
        if use.any():
            b = optimal_bids(target[use], floor[use].astype(np.float64), self.mu[segs[use]],
                             self.sigma[segs[use]])
            out[use] = np.clip(b / value[use], 0.0, 1.0)
        return out


class KnownMarket(SegmentMarkets):
    """The true parameters, handed in (the oracle)."""

    def set(self, site: str, size: int, mu: float, sigma: float) -> None:
        i = self.segment(site, size)
        self.mu[i], self.sigma[i], self.known[i] = mu, sigma, True


class LearnedShading(SegmentMarkets):
    """(mu, sigma) of ln(minimum bid to win) fitted online (Welford) per segment, per site
    and over all; a segment's fit is shrunk toward its site's (when that has
    `min_samples`), which is shrunk toward the overall one; before the overall fit has
    `min_samples`, the fixed factor."""

    def __init__(self, fixed: float, min_samples: int = 30) -> None:
        super().__init__(fixed)
        self.min_samples = min_samples
        self.stats: dict[tuple[str, int], list[float]] = {}  # key -> [n, mean, m2]
        self.keys: list[tuple[str, int]] = []  # segment index -> its (site, size)

    def segment(self, site: str, size: int) -> int:
        i = super().segment(site, size)
        if i == len(self.keys):
            self.keys.append((site, size))
        return i

    def observe(self, segs: np.ndarray, min_to_win: np.ndarray) -> None:
        """First-price auctions' minimum bids to win (CPM micros, > 0)."""
        for i, m in zip(segs.tolist(), np.log(np.maximum(min_to_win, 1.0)).tolist()):
            site, size = self.keys[i]
            for key in ((site, size), (site, -1), ("", -1)):
                st = self.stats.setdefault(key, [0.0, 0.0, 0.0])
                st[0] += 1
                d = m - st[1]
                st[1] += d / st[0]
                st[2] += d * (m - st[1])
        for i, (site, size) in enumerate(self.keys):
            # Shrunk toward the coarser fit: a segment's own samples count n, the prior
            # (its site's fit, or the overall one) PRIOR_WEIGHT.
            prior = None
            for key in (("", -1), (site, -1)):
                fit = self.stats.get(key)
                if fit is not None and fit[0] >= self.min_samples:
                    prior = self._blend(fit, prior)
            if prior is None:
                continue
            own = self.stats.get((site, size))
            mu, var = self._blend(own, prior) if own is not None else prior
            self.mu[i], self.sigma[i], self.known[i] = mu, max(math.sqrt(var), 0.05), True

    PRIOR_WEIGHT = 1.0

    def _blend(self, fit: list[float], prior: tuple[float, float] | None
               ) -> tuple[float, float]:
        """(mean, variance) of a fit [n, mean, m2], shrunk toward `prior` (mean, variance)."""
        n, mean, m2 = fit
        var = m2 / (n - 1) if n > 1 else 0.0
        if prior is None:
            return mean, var
        w = n / (n + self.PRIOR_WEIGHT)
        return w * mean + (1 - w) * prior[0], w * var + (1 - w) * prior[1]


class ServedShading:
    """A pipeline's shading policy over a market model: for `adbid serve --shading-policy
    learned` a LearnedShading fed by the notices; `adbid simulate` runs its learned and
    oracle strategies through it too.

    Each live first-price event it shades is remembered by request id with its segment
    (the most recent `remember` of them, oldest forgotten first: about 50 MB); a notice
    that reports the minimum bid to win for such a bid (a loss's lurl or ReportOutcomes)
    queues that observation, and `refit` (once a second, off the hot path) folds the
    queue into the model. A reload keeps the model (`inherit`).

    `conversion_bonus` (micros, default 0) trades surplus for conversions: each bid
    maximises the surplus as if a conversion were worth `conversion_bonus` more than its
    campaign's value per action (the Lagrangian of "the most surplus for at least so many
    conversions"), and is still never above the value itself."""

    def __init__(self, fixed: float, ad_campaign: np.ndarray, value_per_action: np.ndarray,
                 pacing: np.ndarray, remember: int = 1 << 19,
                 model: SegmentMarkets | None = None, conversion_bonus: float = 0.0) -> None:
        self.model = model if model is not None else LearnedShading(fixed)
        self.conversion_bonus = conversion_bonus
        self.ad_campaign, self.pacing = ad_campaign, pacing
        self.value_per_action = value_per_action.astype(np.float64)
        self.remember = remember
        self._segment_of: dict[str, int] = {}  # request id -> segment (insertion order)
        self._queued: tuple[list[int], list[float]] = ([], [])

    def inherit(self, old: ServedShading) -> None:
        self.model, self._segment_of, self._queued = old.model, old._segment_of, old._queued

    def __call__(self, batch, cand_ad: np.ndarray, score: np.ndarray) -> np.ndarray:
        segs = self.model.segments(batch.site_domain, batch.size_bit)
        first = np.flatnonzero(batch.first_price & (batch.is_test == 0))
        if len(first):
            rids = batch.request_id
            self._segment_of.update(zip([rids[i] for i in first.tolist()],
                                        segs[first].tolist()))
            excess = len(self._segment_of) - self.remember
            if excess > 0:  # forget the oldest
                for rid in list(itertools.islice(self._segment_of, excess)):
                    del self._segment_of[rid]
        value, target = best_values(cand_ad, score, self.ad_campaign, self.value_per_action,
                                    self.pacing, self.conversion_bonus)
        return self.model.factors(segs, value, batch.floor_micros, target)

    def observe(self, request_id: str, min_to_win_cpm_micros: int) -> None:
        """The market's word on a bid: its minimum to win, when the exchange gave one."""
        seg = self._segment_of.pop(request_id, None)
        if seg is not None and min_to_win_cpm_micros > 0:
            self._queued[0].append(seg)
            self._queued[1].append(float(min_to_win_cpm_micros))

    def refit(self) -> int:
        """Fold the queued observations into the model; returns how many."""
        segs, values = self._queued
        if not segs or not isinstance(self.model, LearnedShading):
            return 0
        self.model.observe(np.array(segs, np.int64), np.array(values))
        self._queued = ([], [])
        return len(segs)

    def known_segments(self) -> int:
        return int(self.model.known.sum())

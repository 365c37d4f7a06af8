"""The stage-cost model behind every deadline check (adbid.flow.deadlines.StageCost)."""

import numpy as np

from adbid.flow.deadlines import StageCost


def test_one_odd_batch_does_not_swing_the_estimate():
    """Thousands of batches of one size, then a few of another (a calibration pass): the
    estimate for the usual size must stay near what it costs. A least-squares fit wound
    up here and predicted seconds, which shed every batch."""
    rng = np.random.default_rng(0)
    cost = StageCost()
    for _ in range(3000):
        cost.observe(0.010 + rng.normal(0, 0.0005), 256)
    for n, s in ((64, 0.004), (256, 0.009), (1, 0.0003)):
        cost.observe(s, n)
    assert 0.008 < cost.expect(256) < 0.012
    assert 0.003 < cost.expect(64) < 0.012


def test_sizes_between_and_beyond_what_was_seen():
    cost = StageCost()
    for _ in range(50):
        cost.observe(0.002, 64)
        cost.observe(0.008, 256)
    assert abs(cost.expect(64) - 0.002) < 1e-9
    assert 0.002 < cost.expect(160) < 0.008  # interpolated
    assert abs(cost.expect(1024) - 0.032) < 1e-6  # per event beyond the largest
    assert abs(cost.expect(8) - 0.002) < 1e-9  # never less than the smallest seen
    cost.scale(0.5)
    assert abs(cost.expect(256) - 0.004) < 1e-9

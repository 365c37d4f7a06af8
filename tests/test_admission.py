"""The adaptive admission limit (adbid.flow.admission.AdmissionLimit)."""

import time

from adbid.flow.admission import AdmissionLimit, LoopLag


def test_limit_grows_while_deadlines_are_met_easily_and_is_capped():
    lim = AdmissionLimit(maximum=8, initial=2)
    for _ in range(200):
        lim.done(0.005, 0.050, shed=False)  # 10% of the budget
    assert lim.limit == 8 and lim.admits(7) and not lim.admits(8)


def test_shedding_cuts_the_limit_once_per_episode_but_never_below_the_minimum():
    lim = AdmissionLimit(maximum=32, initial=16, cooldown_s=0.05)
    for _ in range(10):  # ten batches of one congested moment: one cut
        lim.done(0.045, 0.050, shed=False)
    assert lim.limit == 12
    time.sleep(0.06)
    lim.done(0.0, 0.050, shed=True)
    assert lim.limit == 9
    for _ in range(100):
        lim._last_cut = 0.0  # every batch its own episode
        lim.done(0.0, 0.050, shed=True)
    assert lim.limit == 1 and lim.admits(0) and not lim.admits(1)


def test_loop_lag_rises_at_once_and_decays():
    lag = LoopLag()
    lag.observe(0.020)
    assert lag.recent_s == 0.020
    for _ in range(30):
        lag.observe(0.0)
    assert lag.recent_s < 0.001

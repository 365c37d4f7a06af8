"""Money rules shared by the decision core's reference, the ledger and the edges.

All money is int64 micros of the account currency. Prices on the wire are CPM
(per thousand impressions); one impression at CPM price P costs P / 1000.
"""

MICROS_PER_UNIT = 1_000_000


def impression_cost_micros(price_cpm_micros: int) -> int:
    """Cost of one impression at a CPM price, rounded up (conservative for budgets).

    Must stay identical to impression_cost_micros in ext/decision.pyx.
    """
    return (price_cpm_micros + 999) // 1000

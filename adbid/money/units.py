"""Money units and the impression-cost rule.

All money is int64 micros of the account currency. Prices on the wire are CPM
(per thousand impressions); one impression at CPM price P costs P / 1000, rounded
up (conservative for budgets). The rule is defined once, in the compiled decision
loop (ext/decision.pyx), and the books and the Python reference call it from there.
"""

from adbid._decision import impression_cost_micros, impression_costs_micros

MICROS_PER_UNIT = 1_000_000

__all__ = ["MICROS_PER_UNIT", "impression_cost_micros", "impression_costs_micros"]

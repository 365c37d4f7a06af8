"""Currencies: what one unit of the account currency (USD) is worth in each currency adbid
prices in, with a version. Part of the world: loaded from `currencies.json` in the world
directory when present, else the table below; reloaded with the world.

Money inside adbid stays int64 micros of the account currency; conversion happens only at
the edges, and always rounds so that a converted floor is never undercut:
- a floor in another currency converts to account micros rounded up;
- a bid converts to another currency rounded up to the micro;
- a clearing price converts back rounded down (what was paid is never overstated).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

ACCOUNT = "USD"
FILE = "currencies.json"
DEFAULT_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0}
DEFAULT_VERSION = "builtin-2026-11"


class CurrencyError(ValueError):
    """A currency adbid has no rate for, or a table that is not usable."""


@dataclass(frozen=True)
class Currencies:
    """units of a currency per unit of the account currency, by ISO-4217 code."""

    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        if self.rates.get(ACCOUNT) != 1.0:
            raise CurrencyError(f"currencies: the rate of {ACCOUNT}, the account currency, "
                                f"must be 1.0, got {self.rates.get(ACCOUNT)}")
        for code, rate in self.rates.items():
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
                raise CurrencyError(f"currencies: rate of {code} must be a positive number")

    @classmethod
    def load(cls, world_dir: Path) -> Currencies:
        path = Path(world_dir) / FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls({str(k).upper(): float(v) for k, v in data["rates"].items()},
                       str(data["version"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CurrencyError(f"{path}: {exc}") from None

    def knows(self, code: str) -> bool:
        return code.upper() in self.rates

    def rate(self, code: str) -> float:
        rate = self.rates.get(code.upper())
        if rate is None:
            raise CurrencyError(f"currency {code!r}: no rate (known: {sorted(self.rates)})")
        return rate

    def to_account_micros_up(self, amount: float, code: str) -> int:
        """An amount (e.g. a CPM floor) in `code` as account micros, rounded up."""
        return math.ceil(round(amount * 1e6 / self.rate(code), 6))

    def to_account_micros_down(self, amount: float, code: str) -> int:
        """An amount (e.g. a clearing price) in `code` as account micros, rounded down."""
        return math.floor(round(amount * 1e6 / self.rate(code), 6))

    def from_account_micros_up(self, micros: int, code: str) -> float:
        """Account micros as an amount in `code`, rounded up to the micro."""
        return math.ceil(round(micros * self.rate(code), 6)) / 1e6

    def as_json(self) -> str:
        return json.dumps({"version": self.version, "rates": self.rates}, indent=1)

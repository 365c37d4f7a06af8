"""The campaign table: campaigns.json of a world, as columns for the decision core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adbid import targeting


@dataclass(frozen=True)
class CampaignTable:
    """One row per campaign. Money in int64 micros; masks as in adbid.targeting."""

    ids: tuple[str, ...]
    active: np.ndarray  # uint8[C]
    value_per_action_micros: np.ndarray  # int64[C]; what one click/conversion is worth
    budget_micros: np.ndarray  # int64[C]; total budget
    country_mask: np.ndarray  # uint64[C]
    device_mask: np.ndarray  # uint64[C]
    size_mask: np.ndarray  # uint64[C]
    records: tuple[dict[str, Any], ...]  # the validated source records

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def row_of(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.ids)}

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> CampaignTable:
        """Validate campaign records (the campaigns.json schema) and build the columns.

        Raises ValueError naming the campaign and field on any bad record.
        """
        ids: list[str] = []
        cols: dict[str, list[int]] = {k: [] for k in ("active", "vpa", "budget", "cm", "dm", "sm")}
        for n, r in enumerate(records):
            cid = r.get("campaign_id")
            where = f"campaign #{n} ({cid!r})"
            if not isinstance(cid, str) or not cid:
                raise ValueError(f"{where}: campaign_id must be a non-empty string")
            if cid in ids:
                raise ValueError(f"{where}: duplicate campaign_id")
            vpa, budget = r.get("value_per_action_micros"), r.get("budget_micros")
            for name, v in (("value_per_action_micros", vpa), ("budget_micros", budget)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"{where}: {name} must be an integer >= 0 (micros), got {v!r}")
            try:
                cm = targeting.country_mask(r.get("countries", []))
                dm = targeting.device_mask(r.get("device_types", []))
                sm = targeting.size_mask(r.get("slot_sizes", []))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            ids.append(cid)
            cols["active"].append(1 if r.get("active", True) else 0)
            cols["vpa"].append(vpa)
            cols["budget"].append(budget)
            cols["cm"].append(cm)
            cols["dm"].append(dm)
            cols["sm"].append(sm)
        return cls(
            ids=tuple(ids),
            active=np.array(cols["active"], dtype=np.uint8),
            value_per_action_micros=np.array(cols["vpa"], dtype=np.int64),
            budget_micros=np.array(cols["budget"], dtype=np.int64),
            country_mask=np.array(cols["cm"], dtype=np.uint64),
            device_mask=np.array(cols["dm"], dtype=np.uint64),
            size_mask=np.array(cols["sm"], dtype=np.uint64),
            records=tuple(dict(r) for r in records),
        )

"""The campaign table: campaigns.json of a world, as columns for the decision core.

A record (all keys but campaign_id, value_per_action_micros and budget_micros
are optional; an empty targeting list means "no restriction"):

    {"campaign_id": "c0001", "active": true,
     "value_per_action_micros": 120000, "budget_micros": 500000000,
     "countries": ["US", "CA"], "device_types": [1, 3], "slot_sizes": ["300x250"],
     "advertiser_domain": "shoes.example", "categories": ["IAB18"],
     "site_allow": [], "site_block": ["badnews.example"],
     "frequency_cap": {"impressions": 3, "window_s": 86400},
     "pacing": "even",
     "deals": [{"id": "deal-7", "floor_cpm_micros": 2000000, "wseat": []}]}

`deals` (optional): private deals the campaign sells through; an OpenRTB impression
that names one may be bid on by this campaign at no less than the deal's floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adbid.world import targeting

PACING_MODES = ("even", "asap")


@dataclass(frozen=True)
class CampaignTable:
    """One row per campaign. Money in int64 micros; masks as in adbid.world.targeting.

    Budgets and the active flag here are the world's starting values; the spend
    ledger owns their run-time values.
    """

    ids: tuple[str, ...]
    active: np.ndarray  # uint8[C]
    value_per_action_micros: np.ndarray  # int64[C]; what one click/conversion is worth
    budget_micros: np.ndarray  # int64[C]; total budget
    country_mask: np.ndarray  # uint64[C]
    device_mask: np.ndarray  # uint64[C]
    size_mask: np.ndarray  # uint64[C]
    category_mask: np.ndarray  # uint64[C]; the campaign's IAB tier-1 categories (and those
    # of its subcategories): a tier-1 block ("IAB7") blocks them all
    subcategory_ptr: np.ndarray  # int32[C + 1]; CSR of the campaign's subcategory ids
    subcategory_ids: np.ndarray  # int32[...]; ids in subcategory_ids_of: "IAB7-39" blocks these
    advertiser_id: np.ndarray  # int32[C]; row in advertiser_ids, -1 = none given
    site_allow_ptr: np.ndarray  # int32[C + 1]; CSR of site ids the campaign is limited to
    site_allow_ids: np.ndarray  # int32[...]
    site_block_ptr: np.ndarray  # int32[C + 1]; CSR of site ids the campaign avoids
    site_block_ids: np.ndarray  # int32[...]
    freq_cap: np.ndarray  # int32[C]; impressions per user per window, 0 = uncapped
    freq_window_s: np.ndarray  # int64[C]
    pacing_mode: tuple[str, ...]  # "even" | "asap"
    site_ids: dict[str, int]  # site domain -> id, over every campaign's site lists
    advertiser_ids: dict[str, int]  # advertiser domain -> id
    subcategory_id: dict[str, int]  # IAB subcategory code ("IAB7-39") -> id, over all campaigns
    records: tuple[dict[str, Any], ...]  # the validated source records
    # deal id -> (campaign row, floor in CPM micros, seats the deal is for; empty = any)
    deals: dict[str, tuple[int, int, tuple[str, ...]]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def row_of(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.ids)}

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> CampaignTable:
        """Validate campaign records (the schema above) and build the columns.

        Raises ValueError naming the campaign and field on any bad record.
        """
        ids: list[str] = []
        cols: dict[str, list] = {k: [] for k in ("active", "vpa", "budget", "cm", "dm", "sm",
                                                 "cat", "sub", "adv", "allow", "block", "cap",
                                                 "win", "pacing")}
        site_ids: dict[str, int] = {}
        subcategory_id: dict[str, int] = {}
        advertiser_ids: dict[str, int] = {}
        deals: dict[str, tuple[int, int, tuple[str, ...]]] = {}
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
            cats = r.get("categories", [])
            bad = [c for c in cats if targeting.category_bit(c) is None]
            if bad:
                raise ValueError(f"{where}: categories {bad} are not IAB codes (IAB1..IAB26, "
                                 "or a subcategory such as IAB7-39)")
            cap = r.get("frequency_cap") or {}
            impressions, window = cap.get("impressions", 0), cap.get("window_s", 86_400)
            if not (isinstance(impressions, int) and impressions >= 0
                    and isinstance(window, int) and window > 0):
                raise ValueError(f"{where}: frequency_cap needs impressions >= 0 and window_s > 0")
            pacing = r.get("pacing", "asap")
            if pacing not in PACING_MODES:
                raise ValueError(f"{where}: pacing must be one of {PACING_MODES}, got {pacing!r}")
            adv = r.get("advertiser_domain", "")
            for d in r.get("deals") or []:
                deal_id, floor = d.get("id") if isinstance(d, dict) else None, \
                    d.get("floor_cpm_micros", 0) if isinstance(d, dict) else None
                if not isinstance(deal_id, str) or not deal_id or deal_id in deals:
                    raise ValueError(f"{where}: deals need unique, non-empty ids")
                if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
                    raise ValueError(f"{where}: deal {deal_id!r}: floor_cpm_micros must be an "
                                     "integer >= 0")
                deals[deal_id] = (len(ids), floor, tuple(map(str, d.get("wseat") or [])))
            ids.append(cid)
            cols["active"].append(1 if r.get("active", True) else 0)
            cols["vpa"].append(vpa)
            cols["budget"].append(budget)
            cols["cm"].append(cm)
            cols["dm"].append(dm)
            cols["sm"].append(sm)
            cols["cat"].append(targeting.category_mask(cats))
            cols["sub"].append([subcategory_id.setdefault(code, len(subcategory_id))
                                for code in map(targeting.subcategory_code, cats) if code])
            cols["adv"].append(advertiser_ids.setdefault(adv, len(advertiser_ids)) if adv else -1)
            cols["allow"].append([site_ids.setdefault(d, len(site_ids))
                                  for d in r.get("site_allow", [])])
            cols["block"].append([site_ids.setdefault(d, len(site_ids))
                                  for d in r.get("site_block", [])])
            cols["cap"].append(impressions)
            cols["win"].append(window)
            cols["pacing"].append(pacing)
        allow_ptr, allow_ids = targeting.csr(cols["allow"])
        block_ptr, block_ids = targeting.csr(cols["block"])
        sub_ptr, sub_ids = targeting.csr(cols["sub"])
        return cls(
            ids=tuple(ids),
            active=np.array(cols["active"], dtype=np.uint8),
            value_per_action_micros=np.array(cols["vpa"], dtype=np.int64),
            budget_micros=np.array(cols["budget"], dtype=np.int64),
            country_mask=np.array(cols["cm"], dtype=np.uint64),
            device_mask=np.array(cols["dm"], dtype=np.uint64),
            size_mask=np.array(cols["sm"], dtype=np.uint64),
            category_mask=np.array(cols["cat"], dtype=np.uint64),
            subcategory_ptr=sub_ptr, subcategory_ids=sub_ids,
            advertiser_id=np.array(cols["adv"], dtype=np.int32),
            site_allow_ptr=allow_ptr, site_allow_ids=allow_ids,
            site_block_ptr=block_ptr, site_block_ids=block_ids,
            freq_cap=np.array(cols["cap"], dtype=np.int32),
            freq_window_s=np.array(cols["win"], dtype=np.int64),
            pacing_mode=tuple(cols["pacing"]),
            site_ids=site_ids,
            advertiser_ids=advertiser_ids,
            subcategory_id=subcategory_id,
            records=tuple(dict(r) for r in records),
            deals=deals,
        )

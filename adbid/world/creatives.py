"""Creatives: which ads are banners and which are video, and what each video is.

A world may carry `creatives.json`: `{"video": {creative id: {"duration_s", "mimes",
"protocols", "w", "h"}}, "attrs": {creative id: [AdCOM creative attributes]}}`. Ads not
listed under "video" are banners; ads not listed under "attrs" have no attributes.
Without the file every ad is a banner without attributes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE = "creatives.json"
BANNER, VIDEO = 1, 2  # format bits, as events and ads carry them


@dataclass(frozen=True)
class VideoCreative:
    duration_s: int
    mimes: tuple[str, ...]
    protocols: tuple[int, ...]  # AdCOM creative subtypes: 2 VAST 2.0, 3 VAST 3.0, ...
    w: int
    h: int

    def fits(self, mimes: list[str], min_s: int | None, max_s: int | None,
             protocols: list[int]) -> bool:
        """Whether an OpenRTB video placement (its lists empty = no constraint) takes it."""
        return ((not mimes or any(m in self.mimes for m in mimes))
                and (min_s is None or self.duration_s >= min_s)
                and (max_s is None or self.duration_s <= max_s)
                and (not protocols or any(p in self.protocols for p in protocols)))


MAX_ATTR = 63  # attributes are kept as bits of a uint64


def attr_mask(attrs) -> int:
    """AdCOM creative attributes (1..63; others ignored) as a bit mask."""
    return sum(1 << a for a in {int(a) for a in attrs} if 0 < a <= MAX_ATTR)


def load(path: Path,
         creative_ids: np.ndarray) -> tuple[np.ndarray, dict[int, VideoCreative], np.ndarray]:
    """(format of each ad, video creatives by ad row, attribute mask of each ad); raises
    ValueError naming the problem."""
    ad_format = np.full(len(creative_ids), BANNER, dtype=np.uint8)
    ad_attrs = np.zeros(len(creative_ids), dtype=np.uint64)
    video: dict[int, VideoCreative] = {}
    file = Path(path) / FILE
    if not file.is_file():
        return ad_format, video, ad_attrs
    data = json.loads(file.read_text())
    row_of = {str(c): i for i, c in enumerate(creative_ids.tolist())}
    for crid, v in data.get("video", {}).items():
        if crid not in row_of:
            raise ValueError(f"{FILE}: video creative {crid!r} is no ad of the world")
        try:
            video[row_of[crid]] = VideoCreative(int(v["duration_s"]), tuple(map(str, v["mimes"])),
                                                tuple(map(int, v["protocols"])), int(v["w"]),
                                                int(v["h"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{FILE}: video creative {crid!r}: {exc}") from None
        ad_format[row_of[crid]] = VIDEO
    for crid, attrs in data.get("attrs", {}).items():
        if crid not in row_of or not isinstance(attrs, list):
            raise ValueError(f"{FILE}: attrs of {crid!r}: no such ad, or not a list")
        ad_attrs[row_of[crid]] = attr_mask(attrs)
    return ad_format, video, ad_attrs

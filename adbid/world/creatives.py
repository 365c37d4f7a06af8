"""Creatives: which ads are banners and which are video, and what each video is.

A world may carry `creatives.json`: `{"video": {creative id: {"duration_s", "mimes",
"protocols", "w", "h"}}}`. Ads it does not list are banners. Without the file every
ad is a banner.
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


def load(path: Path, creative_ids: np.ndarray) -> tuple[np.ndarray, dict[int, VideoCreative]]:
    """(format of each ad, video creatives by ad row); raises ValueError naming the problem."""
    ad_format = np.full(len(creative_ids), BANNER, dtype=np.uint8)
    video: dict[int, VideoCreative] = {}
    file = Path(path) / FILE
    if not file.is_file():
        return ad_format, video
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
    return ad_format, video

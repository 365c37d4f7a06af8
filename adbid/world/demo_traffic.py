"""Synthetic ad events shaped like the demo world's traffic (for `adbid bid`, warm-up, bench)."""

from __future__ import annotations

import numpy as np

from adbid.v1 import bidder_pb2 as pb
from adbid.world import targeting
from adbid.world.demo_world import DEMO_SITES, TOPIC_WORDS, user_id


def make_events(n: int, rng: np.random.Generator, n_users: int = 100_000,
                unknown_user_rate: float = 0.1, test: bool = False,
                id_prefix: str = "r") -> list[pb.AdEvent]:
    """n events: demo-world user ids (a share unknown), topical context, mixed slots and floors."""
    events = []
    for i in range(n):
        topic = TOPIC_WORDS[rng.integers(len(TOPIC_WORDS))]
        words = rng.choice(topic, size=2, replace=False)
        w, h = targeting.SLOT_SIZES[rng.integers(len(targeting.SLOT_SIZES))]
        known = rng.random() >= unknown_user_rate
        events.append(pb.AdEvent(
            request_id=f"{id_prefix}{i:06d}-{rng.integers(1 << 62):x}",
            user_id=user_id(int(rng.integers(n_users))) if known else "",
            context_text=f"{words[0]} {words[1]} news",
            floor_cpm_micros=int(rng.integers(1, 40)) * 100_000,
            country=targeting.COUNTRIES[rng.integers(len(targeting.COUNTRIES))],
            device_type=pb.DeviceType.ValueType(int(rng.integers(1, 5))),
            slot_width_px=w, slot_height_px=h,
            site_domain=f"site{rng.integers(DEMO_SITES)}.example",
            blocked_categories=["IAB7-39", "IAB25"] if rng.random() < 0.1 else [],
            blocked_advertiser_domains=[f"advertiser{rng.integers(100)}.example"]
            if rng.random() < 0.1 else [],
            auction_type=pb.AUCTION_TYPE_FIRST_PRICE if rng.random() < 0.7
            else pb.AUCTION_TYPE_SECOND_PRICE,
            test=test,
        ))
    return events

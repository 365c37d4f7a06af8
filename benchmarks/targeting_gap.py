"""How many bids top-K retrieval loses to targeting applied after it.

Retrieval returns the K ads nearest to an event; campaign targeting (country,
device, slot size, site lists), publisher blocks, paused campaigns and frequency caps
are applied afterwards, in the decision loop. An eligible ad ranked below K is never
seen. This runs the same demo traffic through the real stages (in process, test
traffic: no budget is spent) at several K, up to every ad in the world (the exhaustive
oracle), and reports per K: the share of events bid, the value of the bids (sum of
value_cpm_micros) against the oracle's, and the pipeline time per batch.

    python benchmarks/targeting_gap.py [--events 4096] [--batch 256] [--ks 16,64,256,0]
                                       [--overfetch 4,8,16]

K 0 stands for every ad. Then K 16 with second looks (`--overfetch`: an event refused
for its 16 is searched 16 x 4, 8, 16 deep, and the next 16 that campaign state and
country/device/size/site targeting admit are scored and decided), as `adbid serve
--overfetch` does. Each setting runs two batches before it is
timed (after every ad is scored, the next setting's first batches ran cold here). The
retrieval cost counts the second looks' deeper searches, which run in the decision stage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write

from adbid.config import ServerConfig, default_world_dir
from adbid.edge.decode import decode_request
from adbid.flow.deadlines import Timekeeper
from adbid.money.ledger import SpendLedger
from adbid.stages import DECISION, RETRIEVAL, SCORING
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.v1 import bidder_pb2 as pb
from adbid.world.artifacts import World
from adbid.world.demo_traffic import make_events


async def one_k(world: World, k: int, batches: list[list[pb.AdEvent]],
                overfetch: int = 1) -> dict:
    cfg = replace(ServerConfig(world=world.path, ledger=None), top_k=k, overfetch=overfetch)
    pipeline = Pipeline(WorldStages(world, cfg), cfg, SpendLedger(world.campaigns, None))
    keeper = Timekeeper(cfg.default_deadline_ms, cfg.send_margin_ms)
    bids = events = 0
    value = 0
    reasons = np.zeros(16, np.int64)
    t0 = time.perf_counter()
    for events_ in batches:
        dec, _ = await pipeline.run(decode_request(pb.BidRequest(events=events_)),
                                    keeper.unbounded(learn=False))
        bids += int(dec.bid.sum())
        events += len(dec.bid)
        value += int(dec.value_cpm_micros[dec.bid].sum())
        reasons += np.bincount(dec.reason, minlength=16)[:16]
    seconds = time.perf_counter() - t0
    pipeline.close()
    stage = keeper.timers.summary()
    # The retrieval stage (the top K) plus the second looks' deeper searches, which run
    # inside the decision stage.
    retrieval_ms = stage[RETRIEVAL]["mean_us"] / 1e3 \
        + pipeline.depth.second_look_s / len(batches) * 1e3
    return {"k": k, "overfetch": overfetch, "events": events, "bid_share": bids / events,
            "value_micros": value,
            "ms_per_batch": seconds / len(batches) * 1e3, "retrieval_ms": retrieval_ms,
            "stage_mean_ms": {s: round(stage[s]["mean_us"] / 1e3, 3)
                              for s in (RETRIEVAL, SCORING, DECISION)},
            "no_bid_reasons": {pb.NoBidReason.Name(r)[14:]: int(c)
                               for r, c in enumerate(reasons.tolist()) if c and r}}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ks", default="16,64,256,0")
    ap.add_argument("--overfetch", default="4,8,16",
                    help="K 16 again with retrieval fetching 16 x each and the targeting "
                         "pre-filter keeping 16")
    ap.add_argument("--world", type=Path, default=default_world_dir())
    a = ap.parse_args()
    world = World.load(a.world)
    rng = np.random.default_rng(7)
    batches = [make_events(a.batch, rng, test=True, id_prefix=f"g{i}-")
               for i in range(max(1, a.events // a.batch))]
    rows = []
    settings = [(int(x) or world.ad_index.ntotal, 1) for x in a.ks.split(",")]
    settings += [(16, int(x)) for x in a.overfetch.split(",") if x]
    for k, overfetch in settings:
        await one_k(world, k, batches[:2], overfetch)  # warm: caches, the allocator
        rows.append(await one_k(world, k, batches, overfetch))
    oracle = max(rows, key=lambda r: r["k"])
    for r in rows:
        r["value_vs_oracle"] = r["value_micros"] / oracle["value_micros"]
        r["bid_vs_oracle"] = r["bid_share"] / oracle["bid_share"]
        print(f"K {r['k']:5d} (fetched {r['k'] * r['overfetch']:5d}): {r['bid_share']:.1%} "
              f"of events bid ({r['bid_vs_oracle']:.1%} of the oracle's), value "
              f"{r['value_vs_oracle']:.1%} of the exhaustive oracle's, "
              f"{r['ms_per_batch']:.1f} ms a batch, retrieval {r['retrieval_ms']:.2f} ms "
              f"({r['retrieval_ms'] / rows[0]['retrieval_ms']:.2f}x the first row's); "
              f"no-bids {r['no_bid_reasons']}")
    out = {"machine": machine(), "world": world.version, "rows": rows}
    print(f"-> {write('targeting_gap', out)}")


if __name__ == "__main__":
    asyncio.run(main())

"""What storing user embeddings as float16 (`adbid demo-world --user-dtype float16`, half
the memory) costs: on demo traffic through the real lookup, the same events with each
user's vector rounded to float16 and back, against float32:

- retrieval: the share of each event's top K that stays the same (recall@K of the
  float16 query against the float32 one);
- scoring: the largest difference in P(intent) over the candidates, and the model's AUC
  on clicks drawn from the world's true click probability (demo_world.true_probability,
  on the float32 vectors), for both.

    python benchmarks/embedding_precision.py [--batches 16] [--batch 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_inputs, machine, write

from adbid.config import ServerConfig, default_world_dir
from adbid.money.ledger import SpendLedger
from adbid.stages.pipeline import Pipeline, WorldStages
from adbid.world.artifacts import World
from adbid.world.demo_world import true_probability


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    world = World.load(default_world_dir())
    cfg = ServerConfig(world=world.path, ledger=None, use_gpu=False)
    p = Pipeline(WorldStages(world, cfg), cfg, SpendLedger(world.campaigns, None))
    ads = p.retriever.index.reconstruct_n(0, p.retriever.index.ntotal)
    rng = np.random.default_rng(3)
    same, diffs, labels, s32, s16 = [], [], [], [], []
    for b, _, u, c in demo_inputs(p, a.batch, n=a.batches):
        u16 = u.astype(np.float16).astype(np.float32)
        cand32 = p.retriever.search(u + c)
        cand16 = p.retriever.search(u16 + c)
        same += [len(set(x) & set(y)) / len(x) for x, y in zip(cand32, cand16)]
        cand = np.maximum(cand32, 0)
        p32 = p.scorer.score(u, c, b.device_type, cand32)
        p16 = p.scorer.score(u16, c, b.device_type, cand32)
        diffs.append(float(np.abs(p32 - p16).max()))
        a_vec = ads[cand]
        truth = true_probability(np.einsum("bd,bkd->bk", u, a_vec),
                                 np.einsum("bd,bkd->bk", c, a_vec),
                                 np.repeat(b.device_type[:, None], cand.shape[1], 1))
        labels.append(rng.random(truth.shape) < truth)
        s32.append(p32)
        s16.append(p16)
    y = np.concatenate([x.ravel() for x in labels])
    auc32 = roc_auc_score(y, np.concatenate([x.ravel() for x in s32]))
    auc16 = roc_auc_score(y, np.concatenate([x.ravel() for x in s16]))
    out = {"machine": machine(), "world": world.version, "events": len(same),
           "recall_at_k": float(np.mean(same)), "events_with_a_different_top_k":
           float(np.mean(np.array(same) < 1)), "max_score_diff": max(diffs),
           "auc_float32": auc32, "auc_float16": auc16,
           "memory_per_user_bytes": {"float32": 4 * world.dim, "float16": 2 * world.dim}}
    print(f"{len(same):,} events: recall@{p.retriever.top_k} of float16 queries "
          f"{out['recall_at_k']:.4f} ({out['events_with_a_different_top_k']:.1%} of events "
          f"differ anywhere in their top K); largest P(intent) difference "
          f"{out['max_score_diff']:.2e}; AUC {auc32:.4f} (float32) against {auc16:.4f} "
          f"(float16) on {len(y):,} pairs")
    print(f"-> {write('embedding_precision', out)}")


if __name__ == "__main__":
    main()

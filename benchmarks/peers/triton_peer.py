"""Peer (b): NVIDIA Triton through nvidia-pytriton, on the same world, index and model.

What a team would build on Triton: a Python model that Triton's dynamic batcher feeds
with gathered events. For each gathered batch it runs the same steps as the Ray peer:
embeddings from the stores, one FAISS query, one onnxruntime run, and the decision in
plain Python (adbid's reference rules, with in-memory budgets). PyTriton hosts a Python
callable, not Triton's onnxruntime backend, so the model runs in that step. Bidder
gRPC calls reach it through benchmarks/peers/triton_front.py, which turns each call
into one HTTP inference request.

Runs in .venv-triton (numpy < 2, protobuf < 7: see requirements-triton.txt) with the
source tree on PYTHONPATH. It imports only adbid's protobuf-free modules. Triton
listens on 127.0.0.1 only: HTTP on --port and gRPC on --port + 1; metrics are off.
PyTriton's backend loads libpython, so LD_LIBRARY_PATH must name this interpreter's
lib directory. benchmarks/peers.py sets it, and removes the workspace afterwards.

    python benchmarks/peers/triton_peer.py --world DIR --port N --workspace DIR
"""

from __future__ import annotations

import argparse
import itertools
import logging
import threading
from types import SimpleNamespace

import numpy as np

INPUTS = {  # name -> dtype; every input is one value per event
    "user_id": bytes, "context_text": bytes, "site_domain": bytes, "country": bytes,
    "blocked_advertiser_domains": bytes, "blocked_categories": bytes,  # "\n"-joined lists
    "floor_cpm_micros": np.int64, "device_type": np.int64, "auction_type": np.int64,
    "slot_width_px": np.int64, "slot_height_px": np.int64, "test": np.int64,
}
OUTPUTS = {"ad_row": np.int64, "price_cpm_micros": np.int64, "value_cpm_micros": np.int64,
           "no_bid_reason": np.int64, "score": np.float32}


class TritonBidder:
    """The gathered-batch step: lookup, retrieval, scoring and the reference decision."""

    def __init__(self, world_dir: str) -> None:
        from adbid.stages import decision_reference as ref
        from adbid.stages.lookup import ContextEncoder, UserLookup
        from adbid.stages.retrieval import Retriever
        from adbid.stages.scoring import Scorer
        from adbid.world.artifacts import World

        self.ref = ref
        self.world = w = World.load(world_dir)
        self.users, self.contexts = UserLookup(w), ContextEncoder(w)
        self.retriever = Retriever(w.ad_index, 16, 1)
        self.scorer = Scorer(w.model_path, w.dim, w.ad_index.ntotal, intra_op_threads=1)
        c = w.campaigns
        self.active = c.active.copy()
        self.budget, self.spent = c.budget_micros.copy(), np.zeros(len(c), np.int64)
        self.reserved = np.zeros(len(c), np.int64)
        self.freq = ref.FrequencyDict()
        self.lock = threading.Lock()

    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        from adbid.stages.lookup import resolve
        from adbid.world import targeting

        def text(name: str) -> list[str]:
            return [v.decode("utf-8") for v in inputs[name][:, 0]]

        def flat(name: str) -> tuple[list[str], np.ndarray]:
            """A "\n"-joined list per event -> the flat list and its counts."""
            lists = [s.split("\n") if s else [] for s in text(name)]
            return (list(itertools.chain.from_iterable(lists)),
                    np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)))

        num = {name: inputs[name][:, 0].astype(np.int64) for name, t in INPUTS.items()
               if t is np.int64}
        b = _Columns(user_id=text("user_id"), site_domain=text("site_domain"))
        b.blocked_advertisers, b.blocked_advertisers_count = flat("blocked_advertiser_domains")
        b.blocked_categories, b.blocked_categories_count = flat("blocked_categories")
        n = len(b)
        resolve(b, self.world.campaigns)
        user = self.users.embeddings(self.users.rows(b.user_id))
        ctx = self.contexts.embeddings(text("context_text"))
        device = num["device_type"]
        cand = self.retriever.search(user + ctx)
        score = self.scorer.score(user, ctx, device, cand)
        c, ref = self.world.campaigns, self.ref
        events = SimpleNamespace(
            floor_micros=num["floor_cpm_micros"],
            first_price=(num["auction_type"] == 1).astype(np.uint8),
            country_bit=targeting.country_bits(text("country")),
            device_bit=targeting.device_bits(device),
            size_bit=targeting.size_bits(num["slot_width_px"], num["slot_height_px"]),
            site_id=b.site_id, blocked_category_mask=b.blocked_category_mask,
            blocked_adv_ptr=b.blocked_adv_ptr, blocked_adv_ids=b.blocked_adv_ids,
            blocked_subcategory_ptr=b.blocked_subcategory_ptr,
            blocked_subcategory_ids=b.blocked_subcategory_ids,
            user_key=b.user_key, user_known=b.user_known, is_test=num["test"].astype(np.uint8))
        books = SimpleNamespace(active=self.active, budget_micros=self.budget,
                                spent_micros=self.spent, reserved_micros=self.reserved)
        outs = ref.grouped_outputs(n)
        with self.lock:
            ref.reference_decide_batch(cand, score, events, c, self.world.ad_campaign,
                                       np.ones(len(c)), books, self.freq, 0, 0.85, outs)
        out_k, price, value, reason = (outs.candidate, outs.price_cpm_micros,
                                       outs.value_cpm_micros, outs.reason)
        bid = out_k >= 0
        rows = np.arange(n)
        k = np.where(bid, out_k, 0)
        return {"ad_row": np.where(bid, cand[rows, k], -1).astype(np.int64).reshape(n, 1),
                "price_cpm_micros": price.reshape(n, 1),
                "value_cpm_micros": value.reshape(n, 1),
                "no_bid_reason": reason.astype(np.int64).reshape(n, 1),
                "score": np.where(bid, score[rows, k], 0).astype(np.float32).reshape(n, 1)}


class _Columns(SimpleNamespace):
    """The columns adbid.stages.lookup.resolve reads (and the ones it fills)."""

    def __len__(self) -> int:
        return len(self.user_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workspace", required=True, help="PyTriton's workspace (a new directory)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--queue-delay-us", type=int, default=2000,
                    help="dynamic batcher: longest wait for more events")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    bidder = TritonBidder(a.world)
    config = TritonConfig(http_address="127.0.0.1", http_port=a.port, grpc_address="127.0.0.1",
                          grpc_port=a.port + 1, allow_metrics=False)
    with Triton(config=config, workspace=a.workspace) as triton:
        triton.bind(
            model_name="bidder", infer_func=batch(bidder.infer),
            inputs=[Tensor(name=name, dtype=t, shape=(1,)) for name, t in INPUTS.items()],
            outputs=[Tensor(name=name, dtype=t, shape=(1,)) for name, t in OUTPUTS.items()],
            config=ModelConfig(max_batch_size=a.max_batch, batcher=DynamicBatcher(
                max_queue_delay_microseconds=a.queue_delay_us)))
        print(f"triton peer on 127.0.0.1:{a.port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()

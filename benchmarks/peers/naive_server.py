"""Peer (a): the naive per-event pattern a team would write first.

A plain gRPC server (thread pool) on the same proto, world, index and model as
adbid, answering one event per call: the user's embedding from a dict, one
FAISS query, one onnxruntime run for that event's candidates, and the decision
in plain Python (adbid's reference rules), with an in-memory budget. No
batching, no compiled loop, no durable ledger (which only flatters it).

    python benchmarks/peers/naive_server.py --world DIR --port N
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from concurrent import futures

import grpc
import numpy as np

from adbid.config import ServerConfig
from adbid.edge.decode import decode
from adbid.money.ledger import SpendLedger
from adbid.stages import decision_reference as ref
from adbid.stages.lookup import resolve
from adbid.stages.pipeline import WorldStages
from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc
from adbid.world.artifacts import World


class NaiveBidder(bidder_pb2_grpc.BidderServicer):
    def __init__(self, world: World) -> None:
        self.world = world
        self.stages = WorldStages(world, ServerConfig(world=world.path, ledger=None))
        self.ledger = SpendLedger(world.campaigns, None)
        self.freq = ref.FrequencyDict()
        self.lock = threading.Lock()
        self.campaign_ids = list(world.campaigns.ids)
        self.creatives = world.ad_creative_ids.tolist()

    def Bid(self, request, context):
        resp = pb.BidResponse(batch_id=request.batch_id, world_version=self.world.version)
        for event in request.events:  # one at a time, as the pattern goes
            resp.decisions.append(self.decide([event])[0])
        return resp

    def decide(self, events) -> list:
        """Decisions for a list of AdEvents: embeddings from the store, one FAISS query and
        one onnxruntime run for all of them, the decision in plain Python (adbid's
        reference rules). The naive server calls it per event; the Ray peer per batch."""
        b = decode(events)
        s = self.stages
        rows = s.users.rows(b.user_id)
        user, ctx = s.users.embeddings(rows), s.contexts.embeddings(b.context_text)
        resolve(b, self.world.campaigns)
        cand = s.retriever.search(user + ctx)
        score = s.scorer.score(user, ctx, b.device_type, cand)
        c, led = self.world.campaigns, self.ledger
        out_cols = ref.grouped_outputs(len(events))
        with self.lock:
            ref.reference_decide_batch(cand, score, b, self.world.campaigns,
                                       self.world.ad_campaign, np.ones(len(c)), led, self.freq,
                                       0, 0.85, out_cols)
        outs = (out_cols.candidate, out_cols.price_cpm_micros, out_cols.value_cpm_micros,
                out_cols.reason)
        out = []
        for i, (k, price, value, reason) in enumerate(zip(*(x.tolist() for x in outs))):
            rid = events[i].request_id
            if k >= 0:
                ad = int(cand[i, k])
                out.append(pb.BidDecision(
                    request_id=rid, bid=True, price_cpm_micros=price, value_cpm_micros=value,
                    campaign_id=self.campaign_ids[self.world.ad_campaign[ad]],
                    creative_id=self.creatives[ad], score=float(score[i, k])))
            else:
                out.append(pb.BidDecision(request_id=rid, no_bid_reason=reason))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server = grpc.server(futures.ThreadPoolExecutor(a.threads))
    bidder_pb2_grpc.add_BidderServicer_to_server(NaiveBidder(World.load(a.world)), server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print(f"naive peer on 127.0.0.1:{a.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)


if __name__ == "__main__":
    main()

"""The Bidder gRPC front of peer (b): the glue a team writes in front of Triton.

It serves adbid's Bidder service, so the same load generator drives it. Each Bid call
becomes one HTTP inference request to the PyTriton model of triton_peer.py: the
call's events as a batch of tensors, in Triton's binary tensor format. The replies
become BidDecisions. Triton's dynamic batcher gathers the events of concurrent calls.
It uses Triton's HTTP client because its gRPC client needs protobuf < 7, which
adbid's stubs refuse.

    python benchmarks/peers/triton_front.py --port N --triton-port M --world DIR
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import tritonclient.http.aio as triton_http

sys.path.insert(0, str(Path(__file__).parent))
from triton_peer import INPUTS, OUTPUTS

from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc
from adbid.world.artifacts import World


class TritonFront(bidder_pb2_grpc.BidderServicer):
    def __init__(self, triton_port: int, world: World) -> None:
        self.client = triton_http.InferenceServerClient(url=f"127.0.0.1:{triton_port}",
                                                        conn_limit=64)
        self.version = world.version
        self.campaign_ids = list(world.campaigns.ids)
        self.ad_campaign = world.ad_campaign
        self.creatives = world.ad_creative_ids.tolist()
        self.outputs = [triton_http.InferRequestedOutput(name, binary_data=True)
                        for name in OUTPUTS]

    def _inputs(self, events) -> list:
        out = []
        for name, dtype in INPUTS.items():
            if dtype is bytes:
                values = [("\n".join(v) if name.startswith("blocked_") else v).encode()
                          for v in (getattr(e, name) for e in events)]
                arr, kind = np.array(values, dtype=np.object_).reshape(-1, 1), "BYTES"
            else:
                arr = np.array([int(getattr(e, name)) for e in events],
                               dtype=np.int64).reshape(-1, 1)
                kind = "INT64"
            tensor = triton_http.InferInput(name, list(arr.shape), kind)
            tensor.set_data_from_numpy(arr, binary_data=True)
            out.append(tensor)
        return out

    async def Bid(self, request: pb.BidRequest, context) -> pb.BidResponse:
        resp = pb.BidResponse(batch_id=request.batch_id, world_version=self.version)
        events = list(request.events)
        if not events:
            return resp
        result = await self.client.infer("bidder", self._inputs(events), outputs=self.outputs)
        ad, price, value, reason, score = (result.as_numpy(name)[:, 0].tolist()
                                           for name in OUTPUTS)
        for e, a, p, v, r, s in zip(events, ad, price, value, reason, score):
            if a >= 0:
                resp.decisions.add(request_id=e.request_id, bid=True, price_cpm_micros=p,
                                   value_cpm_micros=v, score=s,
                                   campaign_id=self.campaign_ids[self.ad_campaign[a]],
                                   creative_id=self.creatives[a])
            else:
                resp.decisions.add(request_id=e.request_id, no_bid_reason=r)
        return resp


async def serve(a: argparse.Namespace) -> None:
    front = TritonFront(a.triton_port, World.load(a.world))
    server = grpc.aio.server()
    bidder_pb2_grpc.add_BidderServicer_to_server(front, server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    await server.start()
    print(f"triton front on 127.0.0.1:{a.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    await front.client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--triton-port", type=int, required=True)
    ap.add_argument("--world", required=True)
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()

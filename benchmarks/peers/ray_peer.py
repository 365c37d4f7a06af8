"""Peer (c): Ray Serve with @serve.batch, on the same world, index, model and proto.

What a team would build on Ray Serve: a deployment that takes a call's events
(Ray Serve's gRPC proxy serves adbid's own Bidder service, so the same load
generator drives it), hands them all at once to a @serve.batch method, which gathers
the events of concurrent calls, runs one FAISS query and one onnxruntime run per
gathered batch, and decides in plain Python
(adbid's reference rules, as the naive peer does). One replica, like adbid's one
process.

Ray opens ports on every interface, whatever host it is given. Run this only
inside a network namespace that has nothing but loopback; `make bench-peers`
does (`unshare --net`, then `ip link set lo up`). It refuses to start otherwise.

    python benchmarks/peers/ray_peer.py --world DIR --port N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
from pathlib import Path

HERE = Path(__file__).parent


def only_loopback() -> bool:
    """True inside a network namespace whose only interface is lo."""
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=2.0)
    a = ap.parse_args()
    if not only_loopback():
        sys.exit("ray_peer: refusing to start outside a loopback-only network namespace "
                 "(Ray listens on every interface); see `make bench-peers`")
    # Ray's worker processes inherit the environment: they must find naive_server.py.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE),
                                                             os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(HERE))

    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from adbid.v1 import bidder_pb2 as pb

    @serve.deployment(num_replicas=1, max_ongoing_requests=512)
    class RayBidder:
        def __init__(self, world_dir: str) -> None:
            from naive_server import NaiveBidder

            from adbid.world.artifacts import World

            self.bidder = NaiveBidder(World.load(world_dir))
            self.version = self.bidder.world.version

        @serve.batch(max_batch_size=a.max_batch, batch_wait_timeout_s=a.batch_wait_ms / 1000)
        async def decide(self, events: list) -> list:
            return self.bidder.decide(events)

        async def Bid(self, request: pb.BidRequest) -> pb.BidResponse:
            resp = pb.BidResponse(batch_id=request.batch_id, world_version=self.version)
            # Every event of the call at once: @serve.batch gathers them (and those of
            # other calls) into batches of up to --max-batch.
            resp.decisions.extend(await asyncio.gather(*map(self.decide, request.events)))
            return resp

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port + 1},
                grpc_options=gRPCOptions(port=a.port, grpc_servicer_functions=[
                    "adbid.v1.bidder_pb2_grpc.add_BidderServicer_to_server"]))
    serve.run(RayBidder.bind(str(a.world)), name="adbid-peer", route_prefix="/")
    print(f"ray peer on 127.0.0.1:{a.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

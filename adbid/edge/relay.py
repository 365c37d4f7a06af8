"""Notices for another worker's bids (`serve --workers N`).

Every worker serves the same OpenRTB port, so an exchange's notice URL reaches any of
them; but each keeps its own books. A bid's notice URLs name the worker that made it
(`w=`). The worker a notice reaches checks its signature (the workers share one notice
key) and turns its prices into account micros; when the bid is another worker's, it
hands the notice to that worker as an adbid.v1.Outcome, over loopback gRPC, to the
notice port each worker writes to `<ledger>/worker-<i>/notices.addr`, and answers
with that worker's verdict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from adbid.v1 import bidder_pb2 as pb
from adbid.v1 import bidder_pb2_grpc

log = logging.getLogger(__name__)

ADDRESS_FILE = "notices.addr"


def write_address(ledger: Path, port: int) -> None:
    """Publish this worker's notice port beside its ledger."""
    tmp = ledger / (ADDRESS_FILE + ".tmp")
    tmp.write_text(f"127.0.0.1:{port}\n")
    tmp.replace(ledger / ADDRESS_FILE)


class NoticeRelay:
    """Hands notices to the worker that made the bid; `root` holds the workers' ledgers."""

    def __init__(self, root: Path, worker: int) -> None:
        self.root, self.worker = root, worker
        self._stubs: dict[int, tuple[str, bidder_pb2_grpc.BidderStub, grpc.aio.Channel]] = {}

    def _stub(self, worker: int) -> bidder_pb2_grpc.BidderStub:
        address = (self.root / f"worker-{worker}" / ADDRESS_FILE).read_text().strip()
        kept = self._stubs.get(worker)
        if kept is None or kept[0] != address:  # first use, or the worker restarted
            channel = grpc.aio.insecure_channel(address)
            kept = self._stubs[worker] = (address, bidder_pb2_grpc.BidderStub(channel), channel)
        return kept[1]

    async def send(self, worker: int, outcome: pb.Outcome) -> pb.OutcomeResult:
        """The other worker's verdict on the notice; a worker that cannot be reached is a
        refusal saying so (the exchange may retry the URL)."""
        try:
            reply = await self._stub(worker).ReportOutcomes(
                pb.ReportOutcomesRequest(outcomes=[outcome]), timeout=2.0)
        except (OSError, grpc.RpcError) as exc:
            log.warning("notice for %r: worker %d cannot be reached: %s", outcome.request_id,
                        worker, exc)
            return pb.OutcomeResult(request_id=outcome.request_id, accepted=False,
                                    error=f"worker {worker}, which made the bid, cannot be "
                                          "reached; retry later")
        return reply.results[0]

    async def close(self) -> None:
        for _, _, channel in self._stubs.values():
            await channel.close()

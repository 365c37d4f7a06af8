"""What one worker passes to the others (`serve --workers N`): notices for their bids,
and Admin changes.

Every worker serves the same OpenRTB port, so an exchange's notice URL reaches any of
them; but each keeps its own books. A bid's notice URLs name the worker that made it
(`w=`). The worker a notice reaches checks its signature (the workers share one notice
key) and turns its prices into account micros; when the bid is another worker's, it
hands the notice to that worker as an adbid.v1.Outcome, over loopback gRPC, to the
notice port each worker writes to `<ledger>/worker-<i>/notices.addr`, and answers
with that worker's verdict.

gRPC notices (ReportOutcomes) name no worker: a client that reports over another
connection than it bid on reaches either. A worker that does not know a notice's
request id asks the others in turn, and answers with the verdict of the one that knows
it (or its own refusal when none does).

Admin calls reach one worker (its own Admin port; `adbid campaign` and `adbid reload`
use worker 0's): a budget change, a pause or a reload made there is made on every other
worker too, over the same loopback port, each worker booking its own slice.

That port answers the workers alone: each call shows a secret derived from the notice
key they share (`<ledger>/notice.key`, readable by the server's user only).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from pathlib import Path

import grpc

from adbid.money.ledger import UNKNOWN_ID
from adbid.v1 import admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb

log = logging.getLogger(__name__)

ADDRESS_FILE = "notices.addr"
PEER_HEADER = "adbid-peer"  # a relayed call's metadata: the workers' shared secret


def peer_secret(key: bytes) -> str:
    """What a worker shows the others: derived from the notice key the workers share."""
    return hmac.new(key, b"adbid worker relay", hashlib.sha256).hexdigest()


def _shown(metadata, secret: str) -> bool:
    given = dict(metadata or ()).get(PEER_HEADER, "")
    return hmac.compare_digest(given.encode(), secret.encode())


class PeersOnly(grpc.aio.ServerInterceptor):
    """The relay port answers the other workers alone: a call that does not show the
    workers' secret is refused (UNAUTHENTICATED), whatever it asks."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

        async def refuse(request, context) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "this port takes calls from adbid's own workers only")

        self._refused = grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if _shown(details.invocation_metadata, self.secret):
            return await continuation(details)
        return self._refused


def write_address(ledger: Path, port: int) -> None:
    """Publish this worker's notice port beside its ledger."""
    tmp = ledger / (ADDRESS_FILE + ".tmp")
    tmp.write_text(f"127.0.0.1:{port}\n")
    tmp.replace(ledger / ADDRESS_FILE)


class WorkerRelay:
    """Hands notices to the worker that made the bid, and Admin changes to every other
    worker; `root` holds the workers' ledgers."""

    def __init__(self, root: Path, worker: int, workers: int, secret: str) -> None:
        """`secret`: peer_secret of the workers' shared notice key."""
        self.root, self.worker, self.workers = root, worker, workers
        self.secret = secret
        self._shown = ((PEER_HEADER, secret),)
        self._stubs: dict[int, tuple[str, bidder_pb2_grpc.BidderStub, admin_pb2_grpc.AdminStub,
                                     grpc.aio.Channel]] = {}

    def _kept(self, worker: int) -> tuple:
        address = (self.root / f"worker-{worker}" / ADDRESS_FILE).read_text().strip()
        kept = self._stubs.get(worker)
        if kept is None or kept[0] != address:  # first use, or the worker restarted
            channel = grpc.aio.insecure_channel(address)
            kept = self._stubs[worker] = (address, bidder_pb2_grpc.BidderStub(channel),
                                          admin_pb2_grpc.AdminStub(channel), channel)
        return kept

    def _stub(self, worker: int) -> bidder_pb2_grpc.BidderStub:
        return self._kept(worker)[1]

    def from_peer(self, context: grpc.aio.ServicerContext) -> bool:
        """Did this call come from another worker (which never relays it again)?"""
        return _shown(context.invocation_metadata(), self.secret)

    async def admin_to_others(self, method: str, request,
                              metadata: tuple[tuple[str, str], ...]) -> list[str]:
        """Make an Admin change made here on every other worker too, at once (`metadata`:
        the caller's authorization); what failed, as "worker i: why"."""
        async def one(worker: int) -> str:
            try:
                await getattr(self._kept(worker)[2], method)(
                    request, timeout=120.0, metadata=(*metadata, *self._shown))
            except grpc.aio.AioRpcError as exc:
                return f"worker {worker}: {exc.code().name}: {exc.details()}"
            except OSError as exc:
                return f"worker {worker} cannot be reached: {exc}"
            return ""

        others = [w for w in range(self.workers) if w != self.worker]
        return [why for why in await asyncio.gather(*(one(w) for w in others)) if why]

    async def send(self, worker: int, outcome: pb.Outcome) -> pb.OutcomeResult:
        """The other worker's verdict on the notice; a worker that cannot be reached is a
        refusal saying so (the exchange may retry the URL)."""
        try:
            reply = await self._stub(worker).ReportOutcomes(
                pb.ReportOutcomesRequest(outcomes=[outcome]), timeout=2.0, metadata=self._shown)
        except (OSError, grpc.RpcError) as exc:
            log.warning("notice for %r: worker %d cannot be reached: %s", outcome.request_id,
                        worker, exc)
            return pb.OutcomeResult(request_id=outcome.request_id, accepted=False,
                                    error=f"worker {worker}, which made the bid, cannot be "
                                          "reached; retry later")
        return reply.results[0]

    async def find(self, outcomes: list[pb.Outcome]) -> dict[str, pb.OutcomeResult]:
        """Notices whose request id this worker does not know, asked of the other workers
        in turn: request id -> the verdict of the worker that knows it. Ids no worker
        knows, or that a worker which cannot be reached may hold, are left out."""
        found: dict[str, pb.OutcomeResult] = {}
        for worker in range(self.workers):
            left = [o for o in outcomes if o.request_id not in found]
            if worker == self.worker or not left:
                continue
            try:
                reply = await self._stub(worker).ReportOutcomes(
                    pb.ReportOutcomesRequest(outcomes=left), timeout=2.0, metadata=self._shown)
            except (OSError, grpc.RpcError) as exc:
                log.warning("%d notices: worker %d cannot be reached: %s", len(left), worker,
                            exc)
                continue
            found.update((r.request_id, r) for r in reply.results
                         if r.accepted or r.error != UNKNOWN_ID)
        return found

    async def close(self) -> None:
        for *_, channel in self._stubs.values():
            await channel.close()

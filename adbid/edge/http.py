"""The exchange's edge: OpenRTB 2.6 over HTTP/1.1, and its notice URLs.

uvicorn with httptools serves a plain ASGI application on the server's own event
loop, beside gRPC, on the same pipeline and the same books:

- `POST /openrtb2/bid`: a bid request (JSON, `Content-Type: application/json`,
  optionally `Content-Encoding: gzip`) -> 200 with a bid response, or no bid: 204
  with no body, or 200 with `nbr` (`--openrtb-nobid nbr`). 400 for a malformed or
  invalid request (nbr 2), 413 for a body over the limit (after decompression too),
  415 for another content type, 408 for a body slower than the body timeout. A
  request whose deadline (`tmax` less `--openrtb-network-ms`) cannot be met gets
  no bid (nbr 15) at once. Answers over 1 kB are gzip'd when the request accepts it.
- `GET|POST /openrtb2/notice/{win,bill,loss}`: the nurl, burl and lurl adbid puts
  in its bids. The billing notice (burl) books the spend at `${AUCTION_PRICE}`; a
  loss (lurl) releases the reservation; the win notice (nurl) is counted and
  logged, and books nothing (billing is what bills). Same ledger and idempotency as
  ReportOutcomes. A notice whose signature does not match is refused (403); one for
  test traffic is ignored; both are counted and logged, never booked.
- `GET /healthz`: 200 while serving, 503 otherwise.

Connections: keep-alive; closed when a request's headers do not arrive within the
header timeout; 503 beyond the connection limit.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import socket
import time
import zlib
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import parse_qs

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adbid import metrics
from adbid.config import ServerConfig
from adbid.edge import notices
from adbid.edge.bidder import BidderService
from adbid.edge.decode import BadRequest
from adbid.edge.openrtb import NoticeSigner, build_response, map_request, settle_deals
from adbid.edge.openrtb_types import DECODER, ENCODER
from adbid.edge.relay import WorkerRelay
from adbid.flow.deadlines import Timekeeper, Unmeetable
from adbid.money.ledger import NoticeResult
from adbid.stages import DECODE
from adbid.stages.pipeline import Pipeline
from adbid.v1 import bidder_pb2 as pb
from adbid.world.currency import ACCOUNT

log = logging.getLogger(__name__)

NBR_INVALID, NBR_TIME = 2, 15  # OpenRTB no-bid reasons: invalid request, insufficient time
GZIP_ABOVE = 1024
BID_ROUTE, NOTICE_ROUTE = "/openrtb2/bid", "/openrtb2/notice/"
NOTICE_KINDS = {"win": None, "bill": pb.OUTCOME_TYPE_BILLING, "loss": pb.OUTCOME_TYPE_LOSS}


class HttpError(Exception):
    def __init__(self, status: int, message: str, nbr: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.nbr = status, message, nbr


class OpenRtbApp:
    """The ASGI application. `current()` is the pipeline now serving."""

    def __init__(self, bidder: BidderService, current: Callable[[], Pipeline],
                 keeper: Timekeeper, cfg: ServerConfig, signer: NoticeSigner,
                 relay: WorkerRelay | None = None) -> None:
        self.bidder, self.current, self.keeper, self.cfg = bidder, current, keeper, cfg
        self.signer = signer
        self.relay = relay  # under --workers: notices for the other workers' bids
        self.base = cfg.openrtb_base_url.rstrip("/")
        self.serving = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        path = scope["path"]
        route = BID_ROUTE if path == BID_ROUTE else \
            "notice" if path.startswith(NOTICE_ROUTE) else path if path == "/healthz" else "other"
        try:
            if route == BID_ROUTE:
                status, headers, body = await self._bid(scope, receive)
            elif route == "notice":
                status, headers, body = await self._notice(scope, receive, path)
            elif route == "/healthz":
                status, headers, body = (200 if self.serving else 503), [], b""
            else:
                status, headers, body = 404, [], b"not found\n"
        except HttpError as exc:
            status, headers, body = self._error(exc, route == BID_ROUTE)
        except Exception:
            log.exception("HTTP %s failed", path)
            status, headers, body = 500, [], b"internal error; see the server log\n"
        if status >= 400 and route == BID_ROUTE and status != 500:
            log.info("openrtb request refused: %d %s", status, body[:200].decode(errors="replace"))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
        metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - t0)

    def _error(self, exc: HttpError, bid_route: bool) -> tuple[int, list, bytes]:
        if bid_route and exc.nbr is not None and self.cfg.openrtb_nobid == "nbr" \
                and exc.status == 400:
            return 400, [(b"content-type", b"application/json")], \
                ENCODER.encode({"id": "", "nbr": exc.nbr})
        return exc.status, [(b"content-type", b"text/plain")], exc.message.encode() + b"\n"

    async def _read(self, scope, receive) -> bytes:
        headers = dict(scope["headers"])
        limit = self.cfg.openrtb_max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"body: {int(declared)} bytes, at most {limit}")
        chunks, size = [], 0
        ends = time.monotonic() + self.cfg.openrtb_body_timeout_s
        while True:
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                              + max(0.0, ends - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise HttpError(408, "body: not received within the body timeout") from None
            if message["type"] == "http.disconnect":
                raise HttpError(400, "client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body: more than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if headers.get(b"content-encoding", b"").strip().lower() == b"gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                raise HttpError(400, f"body: not valid gzip ({exc})", NBR_INVALID) from None
            if len(body) > limit or inflater.unconsumed_tail:
                raise HttpError(413, f"body: more than {limit} bytes once decompressed")
        return body

    async def _bid(self, scope, receive) -> tuple[int, list, bytes]:
        if scope["method"] != "POST":
            raise HttpError(405, "POST a bid request")
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise HttpError(415, "content-type: application/json is required")
        body = await self._read(scope, receive)
        try:
            req = DECODER.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise HttpError(400, f"bid request: {exc}", NBR_INVALID) from None
        except RecursionError:
            raise HttpError(400, "bid request: nested too deeply", NBR_INVALID) from None
        p = self.current()
        try:
            auction = map_request(req, p.world.currencies, self.cfg.openrtb_seat,
                                  self.cfg.openrtb_max_imps, p.world.video,
                                  p.world.campaigns.deals)
        except BadRequest as exc:
            raise HttpError(400, str(exc), NBR_INVALID) from None
        batch = auction.batch
        if batch is None:
            return self._no_bid(req.id, 0)
        budget_ms = (req.tmax if req.tmax and req.tmax > 0 else self.cfg.default_deadline_ms) \
            - self.cfg.openrtb_network_ms
        deadline = self.keeper.deadline(max(budget_ms, 1e-3), None)
        n = len(batch)
        deadline.record(DECODE, time.perf_counter() - t0, n)
        try:
            if budget_ms <= 0 or not deadline.admits(n):
                return self._no_bid(req.id, NBR_TIME)
            dec, commit = await self.bidder.decide(p, batch, deadline)
            await p.durable(commit, deadline, n)
            deadline.withhold_if_late(lambda: p.withdraw(batch, dec))
        except Unmeetable:
            return self._no_bid(req.id, NBR_TIME)
        self.keeper.finished(time.perf_counter() - t0, n, commit is None)
        dealids, dropped = settle_deals(auction, dec)
        if dropped:  # a private auction's bid under its deal's floor: never sent
            p.withdraw(SimpleNamespace(request_id=[batch.request_id[i] for i in dropped],
                                       is_test=batch.is_test[dropped]), dec.take(dropped))
            dec.bid[dropped] = False
        self.bidder.count(batch.is_test, dec)
        response = build_response(auction, dec, p, p.world.currencies, self.cfg.openrtb_seat,
                                  self.base, self.signer, dealids)
        if response is None:
            return self._no_bid(req.id, NBR_TIME if commit is None else 0)
        out = ENCODER.encode(response)
        reply = [(b"content-type", b"application/json"), (b"x-openrtb-version", b"2.6")]
        if len(out) > GZIP_ABOVE and b"gzip" in headers.get(b"accept-encoding", b""):
            out = gzip.compress(out, compresslevel=5)
            reply.append((b"content-encoding", b"gzip"))
        return 200, reply, out

    def _no_bid(self, request_id: str, nbr: int) -> tuple[int, list, bytes]:
        if self.cfg.openrtb_nobid == "nbr":
            return 200, [(b"content-type", b"application/json"), (b"x-openrtb-version", b"2.6")], \
                ENCODER.encode({"id": request_id, "nbr": nbr})
        return 204, [(b"x-openrtb-version", b"2.6")], b""

    async def _notice(self, scope, receive, path: str) -> tuple[int, list, bytes]:
        kind = path[len(NOTICE_ROUTE):]
        if kind not in NOTICE_KINDS:
            raise HttpError(404, "notices are win, bill and loss")
        query = scope.get("query_string", b"").decode("latin-1")
        if scope["method"] == "POST":
            query += "&" + (await self._read(scope, receive)).decode("latin-1")
        q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            rid, bid_micros, test = q["r"], int(q["b"]), int(q["t"])
        except (KeyError, ValueError):
            metrics.OPENRTB_NOTICES.labels(kind, "refused").inc()
            raise HttpError(400, "notice: r, b and t are required") from None
        bid_currency = q.get("k", ACCOUNT)
        if not self.signer.valid(rid, bid_micros, test, bid_currency, q.get("s", "")):
            metrics.OPENRTB_NOTICES.labels(kind, "refused").inc()
            log.warning("%s notice refused: bad signature for %r", kind, rid)
            raise HttpError(403, "notice: signature does not match")
        if test:
            metrics.OPENRTB_NOTICES.labels(kind, "test").inc()
            log.info("%s notice for test traffic %r ignored", kind, rid)
            return 204, [], b""
        outcome = NOTICE_KINDS[kind]
        if outcome is None:  # the win notice: counted, books nothing
            metrics.OPENRTB_NOTICES.labels(kind, "accepted").inc()
            return 204, [], b""
        clearing = min_to_win = reason = 0
        if outcome == pb.OUTCOME_TYPE_BILLING:
            clearing = self._clearing(q.get("p", ""), q.get("c", ""), bid_currency,
                                      bid_micros, rid)
        else:  # kept as market feedback for shading (what the exchange left out is 0)
            min_to_win = self._min_to_win(q.get("m", ""), q.get("c", ""), bid_currency)
            reason = int(code) if (code := q.get("l", "")).isdigit() and len(code) < 6 else 0
            log.info("loss notice for %r: reason %s, minimum to win %s %s", rid,
                     q.get("l", ""), q.get("m", ""), q.get("c", ""))
        worker = q.get("w", "")
        result: NoticeResult | pb.OutcomeResult
        if self.relay is not None and worker.isdigit() and int(worker) != self.relay.worker:
            result = await self.relay.send(int(worker), pb.Outcome(
                request_id=rid, type=outcome, clearing_price_cpm_micros=clearing,
                min_to_win_cpm_micros=min_to_win, loss_reason=reason))
            metrics.OPENRTB_NOTICES.labels(kind, "forwarded").inc()
        else:
            result = await notices.apply_one(self.current(), rid, outcome, clearing,
                                             min_to_win, reason)
        state = "duplicate" if result.duplicate else "accepted" if result.accepted \
            else "rejected"
        metrics.OPENRTB_NOTICES.labels(kind, state).inc()
        if not result.accepted:
            log.warning("%s notice for %r rejected: %s", kind, rid, result.error)
            raise HttpError(400, f"notice: {result.error}")
        return 204, [], b""

    def _min_to_win(self, price: str, currency: str, bid_currency: str) -> int:
        """${AUCTION_MIN_TO_WIN} in ${AUCTION_CURRENCY} (else the bid's) -> account CPM
        micros, rounded down; 0 when it is missing or not a price."""
        currencies = self.current().world.currencies
        try:
            value = float(price)
        except ValueError:
            return 0
        if not math.isfinite(value) or value <= 0 or value > 1e6:
            return 0
        code = currency if currencies.knows(currency or "-") else bid_currency
        return currencies.to_account_micros_down(value, code)

    def _clearing(self, price: str, currency: str, bid_currency: str, bid_micros: int,
                  rid: str) -> int:
        """${AUCTION_PRICE} in ${AUCTION_CURRENCY} (the bid's currency when the exchange
        left that out) -> account CPM micros, rounded down and never above the bid when it
        only differs by the conversion's rounding. A price the exchange left out (empty,
        the macro itself, AUDIT) settles at the bid."""
        p = self.current()
        try:
            value = float(price)
        except ValueError:
            log.info("billing notice for %r without a price (%r): settled at the bid", rid,
                     price)
            return bid_micros
        code = currency if p.world.currencies.knows(currency or "-") else bid_currency
        if not math.isfinite(value) or value < 0:
            raise HttpError(400, "notice: price must be a number >= 0")
        micros = p.world.currencies.to_account_micros_down(value, code)
        slack = math.ceil(1 / p.world.currencies.rate(code)) + 1
        return bid_micros if bid_micros < micros <= bid_micros + slack else micros


def _protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, with a deadline for a request's headers: from the
    connection's start, and from the first byte of every later request on it. A client
    that sends its headers slower (or nothing at all) is disconnected, so slow clients
    cannot hold connections; idle keep-alive connections have their own timeout."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            metrics.HTTP_REQUESTS.labels("headers", "timeout").inc()
            log.info("HTTP connection closed: no complete request headers within %.1f s",
                     header_timeout_s)
            self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


class OpenRtbServer:
    """uvicorn on the running event loop, on a socket of its own (SO_REUSEPORT when
    workers share the port)."""

    def __init__(self, app: OpenRtbApp, cfg: ServerConfig) -> None:
        self.app, self.cfg = app, cfg
        self.port = 0
        self._server: uvicorn.Server | None = None

    async def start(self) -> int:
        cfg = self.cfg
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
        # and without it a keep-alive answer written in two parts waits for a delayed ACK
        # (40 ms here).
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.openrtb_host else socket.AF_INET,
                             socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if cfg.workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((cfg.openrtb_host, max(cfg.openrtb_port, 0)))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {cfg.openrtb_host}:{cfg.openrtb_port} (OpenRTB): "
                          f"{exc}") from None
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        if not self.app.base:
            self.app.base = f"http://{cfg.openrtb_host}:{self.port}"
        config = uvicorn.Config(
            self.app, http=_protocol(cfg.openrtb_header_timeout_s), loop="none",
            lifespan="off", log_config=None,
            access_log=False, server_header=False, date_header=False, proxy_headers=False,
            timeout_keep_alive=max(1, math.ceil(cfg.openrtb_keepalive_s)),
            limit_concurrency=cfg.openrtb_max_connections,
            timeout_graceful_shutdown=max(1, math.ceil(cfg.grace_s)))
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        await server.on_tick(0)
        self._server = server
        return self.port

    async def stop(self) -> None:
        self.app.serving = False
        if self._server is not None:
            await self._server.shutdown()

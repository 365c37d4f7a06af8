"""Errors a client causes, the status each maps to, and the interceptor that maps them.

Every adbid.v1 method runs behind `ErrorInterceptor`: an exception listed in
CLIENT_ERRORS becomes its status code with the exception's message; anything else
is logged with its traceback and becomes INTERNAL ("see the server log"). Clients
never see a traceback. Each call is counted in adbid_requests by method and code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from adbid import metrics
from adbid.edge.decode import BadRequest
from adbid.edge.parse import UndecodableRequest
from adbid.flow.deadlines import Unmeetable
from adbid.money.ledger import LedgerError

log = logging.getLogger(__name__)


class NotFound(KeyError):
    """The request names something that does not exist (NOT_FOUND)."""


class Overloaded(RuntimeError):
    """Too much work in flight; refused at once (RESOURCE_EXHAUSTED)."""


class ReloadRefused(RuntimeError):
    """A world that failed validation; the running one keeps serving (FAILED_PRECONDITION)."""


class Unauthenticated(PermissionError):
    """An Admin call without the right bearer token (UNAUTHENTICATED)."""


class PartlyApplied(RuntimeError):
    """An Admin change made on this worker but not on every other one (UNAVAILABLE: the
    change is idempotent, repeat it)."""


# Exceptions a client caused: the status each maps to, and its adbid_errors kind.
CLIENT_ERRORS: dict[type[BaseException], tuple[grpc.StatusCode, str]] = {
    BadRequest: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    UndecodableRequest: (grpc.StatusCode.INVALID_ARGUMENT, "undecodable_request"),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, "overload"),
    Unmeetable: (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
    NotFound: (grpc.StatusCode.NOT_FOUND, "not_found"),
    LedgerError: (grpc.StatusCode.FAILED_PRECONDITION, "failed_precondition"),
    ReloadRefused: (grpc.StatusCode.FAILED_PRECONDITION, "reload_refused"),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    PartlyApplied: (grpc.StatusCode.UNAVAILABLE, "partly_applied"),
}
ERROR_KINDS = (*(kind for _, kind in CLIENT_ERRORS.values()), "internal", "housekeeping")
for _kind in ERROR_KINDS:
    metrics.ERRORS.labels(_kind)  # exported at 0 from the start


async def _fail(method: str, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
    """Abort the call with the status `exc` maps to (always raises)."""
    mapped = CLIENT_ERRORS.get(type(exc))
    if mapped is None:
        log.error("%s failed", method, exc_info=exc)
        code, kind, message = grpc.StatusCode.INTERNAL, "internal", \
            "internal error; see the server log"
    else:
        code, kind = mapped
        message = str(exc.args[0]) if exc.args else type(exc).__name__
    metrics.REQUESTS.labels(method, code.name).inc()
    metrics.ERRORS.labels(kind).inc()
    await context.abort(code, message)


def _unary(method: str, fn: Callable) -> Callable:
    async def call(request, context):
        try:
            response = await fn(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _fail(method, exc, context)
        metrics.REQUESTS.labels(method, "OK").inc()
        return response

    return call


def _streaming(method: str, fn: Callable) -> Callable:
    async def call(request, context) -> AsyncIterator:
        try:
            async for reply in fn(request, context):
                yield reply
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            await _fail(method, exc, context)
        metrics.REQUESTS.labels(method, "OK").inc()

    return call


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions to status codes for every adbid.v1 method, unary or streaming.
    Handlers are wrapped once per method and reused."""

    PREFIX = "/adbid.v1."

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        path = details.method
        handler = self._wrapped.get(path)
        if handler is not None:
            return handler
        handler = await continuation(details)
        if handler is None or not path.startswith(self.PREFIX):
            return handler
        method = path.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            handler = grpc.unary_unary_rpc_method_handler(
                _unary(method, handler.unary_unary), handler.request_deserializer,
                handler.response_serializer)
        elif handler.stream_stream is not None:
            handler = grpc.stream_stream_rpc_method_handler(
                _streaming(method, handler.stream_stream), handler.request_deserializer,
                handler.response_serializer)
        elif handler.unary_stream is not None:
            handler = grpc.unary_stream_rpc_method_handler(
                _streaming(method, handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        self._wrapped[path] = handler
        return handler

"""The standard grpc.health.v1 service, made to let go of its watchers on drain."""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1 import health, health_pb2


class Health(health.aio.HealthServicer):
    """gRPC's health service, whose Watch streams end once the server drains, right after
    telling their watcher NOT_SERVING. A watcher's stream is a call in flight like any
    other: left open, it would hold every drain for the whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._draining = asyncio.Event()

    async def Watch(self, request, context) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait((watch, draining), return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            elif not watch.cancelled():
                watch.result()  # the stream broke (the watcher left): its error, not a warning
        if self._draining.is_set():  # the last word, even if the watcher's was already sent
            await context.write(health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.NOT_SERVING))

    async def drain(self) -> None:
        """Every service NOT_SERVING from now on; open Watch streams say so and end."""
        await self.enter_graceful_shutdown()
        self._draining.set()

"""The standard grpc.health.v1 service, made to let go of its watchers on drain."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health.aio.HealthServicer):
    """gRPC's health service, whose Watch streams end once the server drains, right after
    telling their watcher NOT_SERVING. A watcher's stream is a call in flight like any
    other: left open, it would hold every drain for the whole grace period.

    Watch is the library's own loop (grpcio-health-checking 1.85.1, pinned: it reads the
    servicer's status table and conditions) with one change: once the server drains, the
    loop ends after its last write. One coroutine writes each stream, so no two writes
    ever overlap (an earlier version cancelled the library's Watch and wrote the last
    status itself, and under load the two writes collided and broke the stream)."""

    async def Watch(self, request, context) -> None:
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, SERVICE_UNKNOWN)
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def drain(self) -> None:
        """Every service NOT_SERVING from now on; open Watch streams say so and end (a
        watcher of a service that was never set is woken too, and ends)."""
        await self.enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()

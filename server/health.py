"""``grpc.health.v1.Health`` for grpc.aio, with a Watch that lets the server drain.

grpc's reference asyncio servicer keeps every Watch stream open until the server
cancels it. An open watcher (gRPC client-side health checking, a load balancer)
would then hold ``server.stop(grace)`` for the whole grace time after the real work
has drained. Here a Watch stream ends once it has told its watcher NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped generated base
    """Check and Watch per service name; ``""`` is the whole server."""

    def __init__(self) -> None:
        self._statuses: dict[str, Any] = {"": _Status.SERVING}
        self._changed = asyncio.Condition()
        self._shutting_down = False

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return _Status(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        last = None
        async with self._changed:
            while True:
                status = self._statuses.get(request.service, _Status.SERVICE_UNKNOWN)
                if status != last:
                    await context.write(_Status(status=status))
                    last = status
                if self._shutting_down:
                    return  # the watcher knows; do not hold the drain
                await self._changed.wait()

    async def set(self, service: str, status: Any) -> None:
        """Set a service's status; ignored once shutting down."""
        async with self._changed:
            if self._shutting_down:
                return
            self._statuses[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING for good and end the Watch streams once they said so."""
        async with self._changed:
            self._shutting_down = True
            for service in self._statuses:
                self._statuses[service] = _Status.NOT_SERVING
            self._changed.notify_all()

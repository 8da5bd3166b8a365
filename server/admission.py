"""Call admission: what is checked before a call reaches its servicer method.

One small class per service, applied by the one registration function in
:mod:`ringd.server.servicers` before the request is decoded: the engine service
bounds the rings in flight and refuses new ones while the server drains; the
admin service checks the bearer token. (A ``grpc.aio.ServerInterceptor`` would
do the same at the cost of an extra coroutine and handler lookup per call.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import Any, Protocol

import grpc
from ringd.server.exceptions import (
    AuthError,
    MetadataTooLargeError,
    OverloadedError,
    PermissionDeniedError,
    ShuttingDownError,
)

Context = grpc.aio.ServicerContext[Any, Any]


class Gate(Protocol):
    """Admits a call (raising a :class:`RingdError` to refuse it) and sees it leave."""

    def admit(self, context: Context) -> None: ...

    def leave(self) -> None: ...


HPACK_ENTRY_OVERHEAD = 32
"""Bytes HTTP/2 counts per header entry on top of its name and value (RFC 7541, 4.1)."""


def check_call_metadata(context: Context, limit: int) -> None:
    """Refuse a call whose metadata is over ``limit`` bytes, counted as HPACK counts it.

    gRPC core accepts up to its own (higher) hard limit, set in :mod:`ringd.server.app`,
    so a call between the two gets this clear answer instead of core's empty one.

    Raises:
        MetadataTooLargeError: the metadata is over ``limit``.
    """
    entries = context.invocation_metadata() or ()
    size = HPACK_ENTRY_OVERHEAD * len(entries)
    for key, value in entries:  # a loop: a generator per call costs more than the sum
        size += len(key) + len(value)
    if size > limit:
        raise MetadataTooLargeError(
            f"call metadata is {size} bytes in {len(entries)} entries, over "
            f"server.max_call_metadata_bytes ({limit}); send fewer or smaller gRPC metadata entries"
        )


class ClosedGate:
    """Refuses every call with ``message``: the admin service on a listener it is not served on."""

    def __init__(self, message: str) -> None:
        self._message = message

    def admit(self, context: Context) -> None:
        """Refuse the call.

        Raises:
            PermissionDeniedError: always.
        """
        raise PermissionDeniedError(self._message)

    def leave(self) -> None:
        return


class RingAdmission:
    """The engine service's admission: at most ``max_inflight`` rings; none while draining."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.draining = False
        """Set at shutdown: new rings are refused UNAVAILABLE while those in flight finish."""
        self._idle = asyncio.Event()

    def admit(self, context: Context) -> None:
        """Count a call in, or refuse it.

        Raises:
            ShuttingDownError: the server is draining.
            OverloadedError: ``max_inflight`` rings are in flight.
        """
        if self.draining:
            raise ShuttingDownError("ringd is shutting down; retry on another replica")
        if self.inflight >= self.max_inflight:
            raise OverloadedError(f"too many rings in flight (limit {self.max_inflight}); retry with backoff")
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.draining and not self.inflight:
            self._idle.set()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new rings (UNAVAILABLE) and wait up to ``timeout_s`` for those in flight."""
        self.draining = True
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)


class TokenGate:
    """The admin service's admission: ``authorization: Bearer <token>`` when a token is set."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def admit(self, context: Context) -> None:
        """Let the call in, or refuse it.

        Raises:
            AuthError: no token presented.
            PermissionDeniedError: the token presented is not the admin token.
        """
        if self._token is None:
            return
        presented = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode("latin-1")
        if presented is None:
            raise AuthError("admin calls need 'authorization: Bearer <token>' metadata")
        scheme, _, token = presented.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise PermissionDeniedError("admin token is not valid")

    def leave(self) -> None:
        return

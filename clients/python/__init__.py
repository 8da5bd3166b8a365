"""ringd.client: async and sync Python clients of the ringd.v1 services.

They take and return plain dicts and typed outcomes, and send the current
OpenTelemetry trace context (``traceparent``) with every call::

    from ringd.client import Client

    with Client("127.0.0.1:50051") as ringd:
        outcome = ringd.execute_ring("pre_flight", {"model": "gpt-4o", "messages": [...]})
        if outcome.action == "block":
            print(outcome.status_code, outcome.message)

A streamed answer (POST_FLIGHT chunk by chunk) is ``stream_ring``: iterate the
chunks to send the client; a block raises ``StreamBlocked``.
"""

from ringd.client._client import (
    AsyncClient,
    AsyncRingStream,
    Client,
    PluginResultInfo,
    RingResult,
    RingStream,
    StreamBlocked,
    StreamResult,
)

__all__ = [
    "AsyncClient",
    "AsyncRingStream",
    "Client",
    "PluginResultInfo",
    "RingResult",
    "RingStream",
    "StreamBlocked",
    "StreamResult",
]

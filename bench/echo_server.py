"""A bare grpc.aio server for the benchmark's ceiling: echoes the request bytes, no plugins.

It answers the same method paths as ringd (ringd.v1.PluginEngineService/ExecuteRing,
ExecuteRings) with the request payload itself, so both servers move the same bytes;
StreamRing answers each message of a bidirectional stream with that message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _echo_stream(requests, context: grpc.aio.ServicerContext):
    """StreamRing's ceiling: one reply per message, the message's own bytes."""
    async for request in requests:
        yield request


async def main(address: str, uvloop: bool) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "ringd.v1.PluginEngineService",
        {
            "ExecuteRing": grpc.unary_unary_rpc_method_handler(_echo),
            "ExecuteRings": grpc.unary_unary_rpc_method_handler(_echo),
            "StreamRing": grpc.stream_stream_rpc_method_handler(_echo_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    await server.start()
    print(f"listening on {address.rsplit(':', 1)[0]}:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    use_uvloop = os.environ.get("RINGD_UVLOOP", "1") != "0"
    if use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        asyncio.run(main(args.listen, use_uvloop))
    except KeyboardInterrupt:
        sys.exit(0)

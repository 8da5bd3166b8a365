"""Loaded by the ringd server that `bench/inside.py` starts (through PYTHONPATH): times the
stages of each ExecuteRing call on the server's own thread, inside the running server.

Each stage is measured with ``time.thread_time_ns`` (CPU time of the event loop thread),
so other processes on the machine do not inflate it. The totals are written as one JSON
line per ``RINGD_INSIDE_EVERY`` calls to the file ``RINGD_INSIDE_OUT``.
"""

from __future__ import annotations

import os

if os.environ.get("RINGD_INSIDE_OUT"):
    import functools
    import json
    from collections.abc import Callable
    from time import thread_time_ns
    from typing import Any

    from ringd.server import convert, engine, logs, servicers

    OUT = os.environ["RINGD_INSIDE_OUT"]
    EVERY = int(os.environ.get("RINGD_INSIDE_EVERY", "5000"))
    TOTALS: dict[str, int] = {
        "call": 0,
        "context": 0,
        "bind": 0,
        "ring": 0,
        "encode": 0,
    }
    CALLS = [0]

    def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                TOTALS[stage] += thread_time_ns() - started

        return wrapper

    def timed_async(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Only for coroutines that finish without suspending (passthrough rings)."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = thread_time_ns()
            try:
                return await fn(*args, **kwargs)
            finally:
                TOTALS[stage] += thread_time_ns() - started

        return wrapper

    convert.context_from_proto = timed("context", convert.context_from_proto)
    logs.bind_request = timed("bind", logs.bind_request)
    servicers._encode = timed("encode", servicers._encode)
    engine.Engine.execute_ring = timed_async("ring", engine.Engine.execute_ring)  # type: ignore[method-assign]
    make_handler = servicers._handle

    def dump(figures: dict[str, int]) -> None:
        """Once per RINGD_INSIDE_EVERY calls: a few microseconds, outside every stage."""
        with open(OUT, "a") as out:
            out.write(json.dumps(figures) + "\n")

    def _handle(*args: Any, **kwargs: Any) -> Any:
        handle = make_handler(*args, **kwargs)

        async def whole(raw: bytes, context: Any) -> Any:
            started = thread_time_ns()
            try:
                return await handle(raw, context)
            finally:
                TOTALS["call"] += thread_time_ns() - started
                CALLS[0] += 1
                if CALLS[0] == EVERY:
                    dump({"calls": CALLS[0], **TOTALS})
                    CALLS[0] = 0
                    for key in TOTALS:
                        TOTALS[key] = 0

        return whole

    servicers._handle = _handle

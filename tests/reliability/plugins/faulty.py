"""A plugin that misbehaves the way its config says (``fault``), for the reliability suite.

Faults: ``raise`` (``exception`` names one of :data:`EXCEPTIONS`; ``suspend_first``
raises after an await), ``hang``, ``return`` (``value`` names one of :data:`GARBAGE`),
``mutate`` (``what`` names one of :data:`MUTATIONS`), ``recurse``, ``allocate``
(``mb``), ``sleep_sync`` and ``cpu`` (``seconds``), and ``pass``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class UnprintableError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise ValueError("__str__ of UnprintableError refuses")


class DoomError(BaseException):
    """A BaseException subclass of the plugin's own."""


class LookAlike:
    """Has every attribute of a PluginResponse, but is not one."""

    action = "passthrough"
    body = None
    response = None
    status_code = None
    error_type = None
    message = "I look like a PluginResponse"


def _stop_iteration() -> BaseException:
    return StopIteration("escaped from a generator")


EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "RuntimeError": lambda: RuntimeError("boom"),
    "ValueError": lambda: ValueError("bad value"),
    "KeyError": lambda: KeyError("missing"),
    "TypeError": lambda: TypeError("wrong type"),
    "ZeroDivisionError": lambda: ZeroDivisionError("division by zero"),
    "AssertionError": lambda: AssertionError("assumption broken"),
    "NotImplementedError": lambda: NotImplementedError("not yet"),
    "StopIteration": _stop_iteration,
    "StopAsyncIteration": lambda: StopAsyncIteration("no more"),
    "CancelledError": lambda: asyncio.CancelledError("cancelled by the plugin"),
    "TimeoutError": lambda: TimeoutError("its own timeout"),
    "ExceptionGroup": lambda: ExceptionGroup("several", [ValueError("one"), KeyError("two")]),
    "UnprintableError": UnprintableError,
    "SurrogateMessage": lambda: ValueError("lone surrogate \udcff in the message"),
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "DoomError": lambda: DoomError("the end"),
}


def _garbage_late_action() -> Any:
    # Not one of the "bad_" family the wire refuses: the ring's check refuses it first.
    response = PluginResponse.passthrough()
    response.action = "explode"  # type: ignore[assignment]
    return response


def _garbage_bad_status() -> Any:
    response = PluginResponse.block(429, "rate_limited", "slow down")
    response.status_code = "four hundred"  # type: ignore[assignment]
    return response


def _garbage_bad_message() -> Any:
    return PluginResponse.passthrough(message={"not": "a string"})  # type: ignore[arg-type]


GARBAGE: dict[str, Callable[[], Any]] = {
    "string": lambda: "passthrough",
    "dict": lambda: {"action": "passthrough"},
    "int": lambda: 200,
    "lookalike": LookAlike,
    "class": lambda: PluginResponse,
    "late_action": _garbage_late_action,
    "bad_status": _garbage_bad_status,
    "bad_message": _garbage_bad_message,
}


def _self_referencing() -> dict[str, Any]:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    return loop


def _deep(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": True}
    for _ in range(levels - 1):
        data = {"child": data}
    return data


def _mutate(ctx: PluginContext, what: str) -> None:
    if what == "set_in_metadata":
        ctx.metadata["tags"] = {"a", "b"}
    elif what == "object_in_body":
        ctx.body["handle"] = object()
    elif what == "bytes_in_body":
        ctx.body["raw"] = b"\x00\x01"
    elif what == "nan_in_metadata":
        ctx.metadata["score"] = math.nan
        ctx.metadata["ceiling"] = math.inf
    elif what == "self_ref_in_metadata":
        ctx.metadata["loop"] = _self_referencing()
    elif what == "self_ref_in_body":
        ctx.body["loop"] = _self_referencing()
    elif what == "deep_metadata":
        ctx.metadata["deep"] = _deep(40)
    elif what == "int_key_in_metadata":
        ctx.metadata[7] = "seven"
    elif what == "surrogate_key_in_metadata":
        ctx.metadata["bad\udcffkey"] = 1
    elif what == "surrogate_in_metadata":
        ctx.metadata["text"] = "bad \udcff text"
    elif what == "metadata_replaced":
        ctx.metadata = None  # type: ignore[assignment]
    elif what == "body_replaced":
        ctx.body = "not an object"  # type: ignore[assignment]
    elif what == "response_replaced":
        ctx.response = ["not", "an", "object"]  # type: ignore[assignment]
    elif what == "stop_chain_error_object":
        ctx.stop_chain = True
        ctx.error = {"not": "a string"}  # type: ignore[assignment]
    else:
        raise AssertionError(f"unknown mutation {what!r}")


MUTATIONS = (
    "set_in_metadata",
    "object_in_body",
    "bytes_in_body",
    "nan_in_metadata",
    "self_ref_in_metadata",
    "self_ref_in_body",
    "deep_metadata",
    "int_key_in_metadata",
    "surrogate_key_in_metadata",
    "surrogate_in_metadata",
    "metadata_replaced",
    "body_replaced",
    "response_replaced",
    "stop_chain_error_object",
)


def _recurse(depth: int) -> int:
    return _recurse(depth + 1) + 1


class Faulty(BasePlugin):
    name = "faulty"
    hook = PluginHook.PRE_FLIGHT
    version = "6.6.6"
    author = "ringd reliability tests"
    description = "misbehaves as configured"
    timeout_ms = 2000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        cfg = self.config
        fault = cfg.get("fault", "pass")
        if cfg.get("mark"):
            ctx.metadata[cfg["mark"]] = True
        if fault == "raise":
            if cfg.get("suspend_first"):
                await asyncio.sleep(0)
            raise EXCEPTIONS[cfg["exception"]]()
        if fault == "hang":
            await asyncio.Event().wait()
        if fault == "return":
            if cfg.get("suspend_first"):
                await asyncio.sleep(0)
            garbage: Any = GARBAGE[cfg["value"]]()
            return garbage  # type: ignore[no-any-return]
        if fault == "mutate":
            _mutate(ctx, cfg["what"])
        elif fault == "recurse":
            _recurse(0)
        elif fault == "allocate":
            block = bytearray(cfg["mb"] * 1024 * 1024)
            return PluginResponse.passthrough(message=f"allocated {len(block) // (1024 * 1024)} MB")
        elif fault == "memory_error":
            raise MemoryError
        elif fault == "sleep_sync":
            time.sleep(cfg["seconds"])
        elif fault == "cpu":
            until = time.perf_counter() + cfg["seconds"]
            spins = 0
            while time.perf_counter() < until:
                spins += 1
            ctx.metadata["spins"] = spins
        return PluginResponse.passthrough(message=cfg.get("message"))

"""WASM plugins: an Extism WebAssembly module run as a ringd plugin, in a sandbox.

A ``type: wasm`` config entry names a module (``entrypoint: path/module.wasm``,
relative to the config file's folder) that exports ``handle``, LLMProxy's
protocol: the host calls it with the JSON ``{"body", "metadata", "session_id",
"config"}`` (plus ``"response"`` when the context holds one) and reads back
``{"action", "body", "status_code", "error_type", "message", "response"}``.

:func:`wasm_plugin_class` builds a :class:`~ringd.sdk.BasePlugin` subclass around
the module, so the engine loads, times, counts, breaks and reloads it like any
Python plugin. What is different lives here:

* The sandbox: no WASI (files, clock, environment) and no network unless the
  entry grants them, no host functions, linear memory capped at the entry's
  ``wasm.memory_limit_mb``.
* A pool of ``wasm.pool_size`` instances, each called on its own thread (the
  Extism runtime releases the GIL), so concurrent rings neither block the event
  loop nor wait for one another.
* Time: when the engine's timer gives up on a call, the guest is stopped
  through its cancel handle; the module's own Extism ``timeout_ms`` (the entry's
  ``timeout_ms`` plus :data:`GUEST_GRACE_MS`) stops it even if nobody cancels it.
  Either way the thread is freed.
* A call that trapped, ran out of memory or was stopped raises, so it is the
  plugin's failure under its ``fail_policy``; its instance is thrown away and a
  fresh one takes its place. An instance that was sent a cancel is never reused.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import extism
import extism_sys
import orjson
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse, PluginResponseError
from ringd.server.config import PluginEntry

_log = logging.getLogger("ringd.wasm")

EXPORT = "handle"
"""The function every module exports (LLMProxy's name)."""
GUEST_GRACE_MS = 20
"""The guest's own time limit is the entry's ``timeout_ms`` plus this.

The engine's timer fires first and cancels the guest; this limit is the
backstop that stops a guest nobody cancelled, and the grace keeps the two from
racing, so a runaway call is reported as the plugin's timeout.
"""
_PAGE_BYTES = 64 * 1024
_WASM_MAGIC = b"\0asm"
_ACTION_ALIASES = {"allow": "passthrough", "modified": "modify"}
"""LLMProxy's legacy action names, accepted as it accepts them."""


class WasmModuleError(Exception):
    """A ``type: wasm`` entry's module cannot be used; the message names the entry and field."""


class WasmGuestError(Exception):
    """A call into the guest failed: it trapped, ran out of memory or was stopped at its time limit."""


class WasmOutputError(Exception):
    """The guest answered with something that is not a valid response."""


@dataclass(frozen=True, slots=True)
class WasmModule:
    """A module read from disk with the sandbox it runs in."""

    path: Path
    code: bytes
    digest: str
    entry: PluginEntry

    def manifest(self) -> dict[str, Any]:
        """The Extism manifest: the module's bytes and the entry's limits and grants."""
        settings = self.entry.wasm
        timeout_ms = self.entry.timeout_ms or BasePlugin.timeout_ms
        return {
            "wasm": [{"data": self.code}],
            "memory": {"max_pages": settings.memory_limit_mb * 1024 * 1024 // _PAGE_BYTES},
            "timeout_ms": timeout_ms + GUEST_GRACE_MS,
            "allowed_hosts": list(settings.allowed_hosts),
            "allowed_paths": dict(settings.allowed_paths),
        }


def read_module(entry: PluginEntry, base_dir: Path) -> WasmModule:
    """Read and sniff the module an entry names (no compiling: that happens off the loop).

    Raises:
        WasmModuleError: the file is missing, unreadable or not a binary WebAssembly module.
    """
    path = Path(entry.entrypoint)
    path = path if path.is_absolute() else base_dir / path
    where = f"field 'entrypoint' ({entry.entrypoint!r})"
    try:
        code = path.read_bytes()
    except OSError as exc:
        raise WasmModuleError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if not code.startswith(_WASM_MAGIC):
        raise WasmModuleError(f"{where}: {path} is not a WebAssembly module (no \\0asm header)")
    return WasmModule(path=path, code=code, digest=hashlib.sha256(code).hexdigest(), entry=entry)


def wasm_plugin_class(entry: PluginEntry, base_dir: Path) -> type[WasmPlugin]:
    """A plugin class bound to the module and sandbox of one ``type: wasm`` entry.

    Raises:
        WasmModuleError: the module file cannot be used (see :func:`read_module`).
    """
    module = read_module(entry, base_dir)
    attributes = {
        "name": entry.name,
        "hook": entry.hook or PluginHook.PRE_FLIGHT,
        "version": f"sha256:{module.digest[:12]}",
        "description": f"WASM module {module.path.name}",
        "timeout_ms": entry.timeout_ms or BasePlugin.timeout_ms,
        "module": module,
    }
    return type(f"WasmPlugin[{entry.name}]", (WasmPlugin,), attributes)


class WasmPlugin(BasePlugin):
    """A plugin whose ``execute`` calls a WebAssembly module's ``handle`` export.

    Built per entry by :func:`wasm_plugin_class`; ``on_load`` compiles the module
    and starts its pool, ``on_unload`` stops the pool.
    """

    module: ClassVar[WasmModule]

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._pool: _Pool | None = None

    async def on_load(self) -> None:
        """Compile the module, check its export and start the instances (on a thread).

        Raises:
            WasmModuleError: the module does not compile, link or export ``handle``.
        """
        self._pool = await asyncio.to_thread(_Pool, self.module, self.name)

    async def on_unload(self) -> None:
        """Stop the pool (the engine unloads a plugin once its rings have drained)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Call the guest's ``handle`` with the context as JSON and return its answer.

        Raises:
            WasmGuestError: the guest trapped, ran out of memory or hit its time limit.
            WasmOutputError: the guest's answer is not a valid response.
        """
        if self._pool is None:
            raise WasmGuestError("the module is not loaded (on_load has not run)")
        document: dict[str, Any] = {
            "body": ctx.body,
            "metadata": ctx.metadata,
            "session_id": ctx.session_id,
            "config": self.config,
        }
        if ctx.response is not None:
            document["response"] = ctx.response
        # Encoded here, on the loop: the ring owns ctx, a worker thread never reads it.
        try:
            payload = orjson.dumps(document)
        except TypeError as exc:  # orjson.JSONEncodeError: a value that is not JSON
            raise WasmOutputError(f"the context cannot be sent as JSON: {exc}") from None
        return await self._pool.call(payload)


class _Call:
    """One call's claim on an instance, so a cancel reaches the guest it started."""

    __slots__ = ("cancelled", "instance", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.instance: _Instance | None = None
        self.cancelled = False

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.instance is not None:
                self.instance.cancel.cancel()


@dataclass(slots=True)
class _Instance:
    plugin: extism.Plugin
    cancel: Any  # extism.extism.CancelHandle (untyped)


class _Pool:
    """``pool_size`` instances of the module and as many threads to call them on.

    At most ``pool_size`` calls run at once (the executor's threads), and each
    returns its instance (or a fresh one) before its thread takes the next call,
    so a running call always finds an idle instance.
    """

    def __init__(self, module: WasmModule, name: str) -> None:
        _pin_runtime()
        self.module = module
        self.name = name
        settings = module.entry.wasm
        self.manifest = module.manifest()
        first = self._fresh()
        if not first.plugin.function_exists(EXPORT):
            where = f"field 'entrypoint' ({module.entry.entrypoint!r})"
            raise WasmModuleError(f"{where}: {module.path} exports no function {EXPORT!r}")
        self.idle: queue.SimpleQueue[_Instance] = queue.SimpleQueue()
        self.idle.put(first)
        for _ in range(settings.pool_size - 1):
            self.idle.put(self._fresh())
        self.executor = ThreadPoolExecutor(settings.pool_size, thread_name_prefix=f"ringd-wasm-{name}")
        self.limits = (settings.memory_limit_mb, (module.entry.timeout_ms or BasePlugin.timeout_ms))

    def _fresh(self) -> _Instance:
        """A new instance with its own compiled module, so its own runtime engine.

        Instances must not share one compiled module: when a call on one of them is
        stopped (cancelled or timed out), the others of the same compiled module that
        had not run yet trap ("interrupt") on every later call (extism-sys 1.41).
        Compiling a small module takes about a millisecond.
        """
        try:
            # No host functions at all (the default would be every @host_fn registered in the process).
            plugin = extism.Plugin(self.manifest, wasi=self.module.entry.wasm.wasi, functions=[])
        except extism.Error as exc:
            where = f"field 'entrypoint' ({self.module.entry.entrypoint!r})"
            raise WasmModuleError(
                f"{where}: {self.module.path} does not load: {_load_problem(exc)}"
            ) from None
        return _Instance(plugin=plugin, cancel=plugin.cancel_handle())

    async def call(self, payload: bytes) -> PluginResponse:
        claim = _Call()
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._run, claim, payload)
        try:
            return await future
        except asyncio.CancelledError:
            # The engine's timer (or the caller) gave up: stop the guest now, not at its own limit.
            claim.cancel()
            raise

    def _run(self, claim: _Call, payload: bytes) -> PluginResponse:
        """On a pool thread: call ``handle`` on an idle instance and parse the answer."""
        instance = self.idle.get_nowait()
        with claim.lock:
            if claim.cancelled:
                self.idle.put(instance)
                raise WasmGuestError("cancelled before it started")
            claim.instance = instance
        try:
            output = instance.plugin.call(EXPORT, payload)
        except extism.Error as exc:
            self._release(claim, instance, poisoned=True)
            raise WasmGuestError(self._explain(exc)) from None
        self._release(claim, instance, poisoned=False)
        return parse_answer(output, self.name)

    def _release(self, claim: _Call, instance: _Instance, *, poisoned: bool) -> None:
        with claim.lock:
            claim.instance = None
            # A cancel may have landed after the guest returned: never reuse that instance.
            poisoned = poisoned or claim.cancelled
        if poisoned:
            try:
                instance = self._fresh()
            except WasmModuleError:
                # The module instantiated before, so the host is failing (out of memory?): keep the
                # old instance rather than shrink the pool; if it misbehaves, its calls fail and count.
                _log.exception("plugin %r: cannot replace a failed instance; reusing it", self.name)
        self.idle.put(instance)

    def _explain(self, exc: extism.Error) -> str:
        memory_mb, timeout_ms = self.limits
        text = _first_line(exc)
        if text == "timeout":
            return f"guest stopped at its time limit ({timeout_ms} ms)"
        if text == "oom":
            return f"guest ran out of memory (limit {memory_mb} MiB)"
        return f"guest trapped: {text}"

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def parse_answer(output: bytes, name: str) -> PluginResponse:
    """Turn the guest's JSON answer into a response, as LLMProxy reads it.

    Empty output and a missing ``action`` mean passthrough (as in LLMProxy);
    invalid JSON, an unknown action or a field of the wrong type is an error
    (LLMProxy lets those through; ringd counts them as the plugin's failure).

    Raises:
        WasmOutputError: the answer is not valid; the message says what is wrong.
    """
    if not output.strip():
        return PluginResponse.passthrough()
    try:
        answer = orjson.loads(output)
    except orjson.JSONDecodeError as exc:
        raise WasmOutputError(f"{EXPORT} returned invalid JSON ({exc}): {bytes(output[:60])!r}") from None
    if not isinstance(answer, dict):
        raise WasmOutputError(f"{EXPORT} returned a JSON {type(answer).__name__}, expected an object")
    action = answer.get("action", "passthrough")
    message = answer.get("message")
    if not isinstance(action, str):
        raise WasmOutputError(f"{EXPORT} returned action {action!r}, expected a string")
    if message is not None and not isinstance(message, str):
        raise WasmOutputError(f"{EXPORT} returned message {message!r}, expected a string")
    action = action.lower()
    action = _ACTION_ALIASES.get(action, action)
    try:
        if action == "passthrough":
            return PluginResponse.passthrough(message=message)
        if action == "modify":
            modify = PluginResponse.modify(body=answer.get("body"), message=message)
            modify.validate()  # no body keeps the request's (LLMProxy); a non-object body is an error
            return modify
        if action == "cache_hit":
            cached = PluginResponse.cache_hit(response=answer.get("response"), message=message)
            cached.validate()
            return cached
        if action == "block":
            status = answer.get("status_code", 403)
            error_type = answer.get("error_type", "wasm_block")
            if not isinstance(status, int) or isinstance(status, bool):
                raise WasmOutputError(f"{EXPORT} returned status_code {status!r}, expected an integer")
            if not isinstance(error_type, str):
                raise WasmOutputError(f"{EXPORT} returned error_type {error_type!r}, expected a string")
            return PluginResponse.block(
                status_code=status,
                error_type=error_type,
                message=message or f"blocked by WASM plugin {name!r}",
            )
    except PluginResponseError as exc:
        raise WasmOutputError(f"{EXPORT} returned an invalid {action}: {exc}") from None
    known = "passthrough, modify, block or cache_hit"
    raise WasmOutputError(f"{EXPORT} returned unknown action {answer.get('action')!r}; expected {known}")


def _pin_runtime() -> None:
    """Keep the Extism runtime library loaded until the process exits.

    cffi unloads it (dlclose) when its handle is freed at interpreter teardown, and
    its finalizer then joins the runtime's timer thread while the dynamic loader's
    lock is held: a timer thread still starting needs that lock, and a short-lived
    process (``ringd check-config``) was seen hanging there. With a second reference
    the library is finalized by exit() itself, which calls finalizers without that lock.
    dlopen of a loaded library only counts a reference, so calling this again is cheap.
    """
    ctypes.CDLL(str(Path(extism_sys.__file__).with_name("libextism_sys.so")))


def _load_problem(exc: BaseException) -> str:
    """The runtime's reason, with the fix when the module needs WASI it was not granted."""
    text = _first_line(exc)
    if "unknown import" in text and "wasi_snapshot_preview1" in text:
        text += " (the module is built for WASI: grant it with wasm.wasi: true)"
    return text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__

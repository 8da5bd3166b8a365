"""BACKGROUND ``audit_log``: append one JSON line per request to a file.

The file is opened for appending in ``on_load`` (created with mode 0600; an
existing file open to other users is made 0600, or refused with an error naming
it when its mode cannot be changed) and
closed in ``on_unload``. A call only encodes its record and queues the line: one
writer task gathers the lines of about :attr:`AuditLog.FLUSH_INTERVAL_S` (50 ms)
and writes them with one ``write`` in a worker thread, so the event loop never
waits on the disk, a request pays no thread round trip, and lines from concurrent
requests never interleave. ``on_unload`` (a reload, a clean shutdown) writes every
queued line before it closes the file; a process killed outright can lose the
last ~50 ms of lines. When more than 8 MiB of lines wait (a disk slower than the
traffic), calls wait for the writer instead of queueing more. A failed write (a full
disk, a lost mount) keeps its lines, in order, and is retried every 50 ms; meanwhile
every call raises (its line is queued too), so the plugin's fail policy and error
metrics see it, and nothing acknowledged is lost or written twice while the process lives.

A record::

    {"time": "2025-01-31T12:00:00.123456+00:00", "time_unix": 1738324800.123456,
     "request_id": "...", "session_id": "...", "tenant": "acme",
     "api_key_id": "key-1", "model": "gpt-4o-mini", "requested_model": "gpt-4o",
     "method": "POST", "path": "/v1/chat/completions", "client_address": "10.0.0.7",
     "headers": {"user-agent": "..."}, "outcome": "ok", "finish_reasons": ["stop"],
     "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
     "metadata": {"route_rule": "default", "pii_counts": {}, ...}}

``outcome`` is ``"ok"``, ``"error"`` (the answer carries an ``error``) or
``"no_response"``. With ``include_content`` a ``"content"`` entry adds the message
texts (``[{"role", "text"}]``) and the answer's texts; images and other non-text
parts are never logged.

Secrets stay out: only allow-listed headers are logged, and credential headers
(``authorization``, ``x-api-key``, ``cookie``...) cannot be allow-listed;
``_pii_mapping`` (the originals ``pii_redactor`` masked) is only logged with
``include_content``.

Config:
    path (str, required): the log file; its folder must exist.
    include_content (bool, default false): log message and answer texts.
    headers (list[str], default ``["user-agent"]``): request headers to log.
    include_client_address (bool, default true): log the client's address.
    metadata_keys (list[str], default: tenant, api_key_id, retry_after_s,
        _rate_limiter, pii_counts, prompt_guard_flags, _cache_status,
        _max_tokens_clamp, _complexity_score, route_model, route_upstream,
        route_rule, _response_sanitizer, usage): the metadata copied into the
        record's ``"metadata"`` (the action summary), when present.

Metadata written: none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from ringd.plugins._common import ConfigReader, iter_message_texts, iter_response_texts
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_log = logging.getLogger("plugin.audit_log")

DEFAULT_METADATA_KEYS = (
    "tenant",
    "api_key_id",
    "retry_after_s",
    "_rate_limiter",
    "pii_counts",
    "prompt_guard_flags",
    "_cache_status",
    "_max_tokens_clamp",
    "_complexity_score",
    "route_model",
    "route_upstream",
    "route_rule",
    "_response_sanitizer",
    "usage",
)
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
        "x-amz-security-token",
    }
)


def _open_owner_only(path: str) -> int:
    """Open ``path`` for appending, created 0600; an existing file readable by others made 0600.

    Raises:
        PermissionError: the file is open to other users and its mode cannot be changed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        try:
            os.fchmod(fd, 0o600)
        except OSError as exc:
            os.close(fd)
            raise PermissionError(
                f"audit_log: the audit file {path!r} is open to other users (mode {mode:04o}) and "
                f"ringd cannot make it owner-only ({exc.strerror}); run `chmod 600` on it as its owner"
            ) from exc
        _log.warning("audit_log: the audit file %s was mode %04o; made it 0600 (owner only)", path, mode)
    return fd


def _encode_line(record: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8; values JSON cannot hold are written as their ``str``."""
    try:
        return orjson.dumps(
            record,
            default=str,
            option=orjson.OPT_APPEND_NEWLINE
            | orjson.OPT_NON_STR_KEYS
            | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS,
        )
    except orjson.JSONEncodeError:  # what orjson refuses (a lone surrogate, a huge int): the slow path
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
        return (line + "\n").encode("utf-8", "surrogatepass")


class AuditLog(BasePlugin):
    """Appends a JSON line per request: who, which model, what the rings decided."""

    name: ClassVar[str] = "audit_log"
    hook: ClassVar[PluginHook] = PluginHook.BACKGROUND
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "One JSON line per request in an audit file"
    timeout_ms: ClassVar[int] = 200
    FLUSH_INTERVAL_S: ClassVar[float] = 0.05
    """How long the writer gathers lines before one write."""
    MAX_QUEUED_BYTES: ClassVar[int] = 8 * 1024 * 1024
    """Above this many bytes of queued lines, calls wait for the writer."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown(
            {"path", "include_content", "headers", "include_client_address", "metadata_keys"}
        )
        path = reader.get_str("path", None)
        if path is None:
            raise reader.error("path", "the path of the audit file", None)
        self.path = path
        self.include_content = reader.get_bool("include_content", False)
        self.include_client_address = reader.get_bool("include_client_address", True)
        headers = [h.lower() for h in reader.get_str_list("headers", ["user-agent"]) or []]
        credentials = sorted(CREDENTIAL_HEADERS.intersection(headers))
        if credentials:
            raise reader.error("headers", "headers that carry no credentials", credentials[0])
        self.headers = tuple(headers)
        keys = reader.get_str_list("metadata_keys", list(DEFAULT_METADATA_KEYS)) or []
        if "_pii_mapping" in keys and not self.include_content:
            raise reader.error("metadata_keys", "free of '_pii_mapping' unless include_content is true", keys)
        self.metadata_keys = tuple(keys)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._failure: Exception | None = None

    async def on_load(self) -> None:
        """Open the file for appending (raises if it cannot be opened) and start the writer."""
        self._fd = await asyncio.to_thread(_open_owner_only, self.path)
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._writer = asyncio.create_task(self._write_queued(), name=f"{self.name}-writer")

    async def on_unload(self) -> None:
        """Write every queued line, then close the file."""
        writer = self._writer
        if writer is not None:
            self._closing = True  # the writer writes what is queued, then returns
            self._hurry.set()
            self._wake.set()
            await asyncio.wait([writer])  # had it failed, the lines left are written below
            self._writer = None
        if self._queued:  # queued while the writer stopped: written here, never dropped
            await self._write_batch()
        fd, self._fd = self._fd, None
        if fd is not None:
            await asyncio.to_thread(os.close, fd)

    async def flush(self) -> None:
        """Return once every line queued before the call is in the file."""
        if self._writer is None or self._writer.done():
            if self._queued:
                await self._write_batch()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        self._hurry.set()
        self._wake.set()
        await waiter

    async def _write_queued(self) -> None:
        """The writer task: each round gathers lines for FLUSH_INTERVAL_S, then writes them."""
        while True:
            await self._wake.wait()
            if not (self._hurry.is_set() or self._closing):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.FLUSH_INTERVAL_S)
            self._wake.clear()
            self._hurry.clear()
            waiters, self._flush_waiters = self._flush_waiters, []
            await self._write_batch()
            failure = self._failure
            for waiter in waiters:
                if not waiter.done():
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(self._failed(failure))
            if self._closing and (not self._queued or failure is not None):
                return  # on_unload tries the rest once more, then closes
            if failure is not None:
                self._wake.set()  # retried after FLUSH_INTERVAL_S, with or without new calls

    async def _write_batch(self) -> None:
        """Write the queued lines; on failure keep them, in order, for the next round.

        While writes fail every call raises (the plugin's fail policy decides), and the
        lines already queued wait at the front of the queue: a full disk or a lost mount
        loses no acknowledged line while the process lives. The queue stays bounded:
        past ``MAX_QUEUED_BYTES`` calls wait (and time out) until a write succeeds.
        """
        batch, self._queued = self._queued, []
        if not batch:
            self._queued_bytes = 0
            self._room.set()
            return
        data = b"".join(batch)
        written = [0]
        try:
            await asyncio.to_thread(self._write, data, written)
        except Exception as exc:  # kept and retried; every call reports it meanwhile
            if self._failure is None:  # logged once per failing spell, not every round
                _log.error("%s: writing %d records to %s failed: %s", self.name, len(batch), self.path, exc)
            self._failure = exc
            self._queued.insert(0, data[written[0] :])  # what a short write left, never twice
            self._queued_bytes -= written[0]
            return
        if self._failure is not None:
            _log.warning(
                "%s: writing to %s works again; %d records written", self.name, self.path, len(batch)
            )
            self._failure = None
        self._queued_bytes -= len(data)
        if self._queued_bytes <= self.MAX_QUEUED_BYTES:
            self._room.set()

    def _failed(self, failure: Exception) -> RuntimeError:
        """What a call or a flush raises while writes to the file fail."""
        return RuntimeError(f"{self.name}: writing to {self.path} failed: {failure}")

    def _write(self, data: bytes, written: list[int] | None = None) -> None:
        """Write ``data`` whole; ``written[0]`` counts the bytes written, for a retry after a failure."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise RuntimeError(f"{self.name}: the log file is closed")
            view = memoryview(data)
            while view:
                count = os.write(fd, view)
                view = view[count:]
                if written is not None:
                    written[0] += count

    def record(self, ctx: PluginContext) -> dict[str, Any]:
        """The audit record of ``ctx`` (see the module docstring)."""
        now = time.time()
        metadata = ctx.metadata
        response = ctx.response if isinstance(ctx.response, dict) else None
        requested = ctx.body.get("model")
        model = (response or {}).get("model") or metadata.get("route_model") or requested
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(),
            "time_unix": now,
            "request_id": ctx.request_id,
            "session_id": ctx.session_id,
            "tenant": metadata.get("tenant"),
            "api_key_id": metadata.get("api_key_id"),
            "model": model,
            "requested_model": requested,
            "method": ctx.request.method,
            "path": ctx.request.path,
        }
        if self.include_client_address:
            record["client_address"] = ctx.request.client_address
        headers = ctx.request.headers
        record["headers"] = {name: headers[name] for name in self.headers if name in headers}
        if response is None:
            record["outcome"] = "no_response"
        else:
            record["outcome"] = "error" if response.get("error") else "ok"
            choices = response.get("choices")
            if isinstance(choices, list):
                record["finish_reasons"] = [
                    choice.get("finish_reason") for choice in choices if isinstance(choice, dict)
                ]
            usage = response.get("usage")
            if isinstance(usage, dict):
                record["usage"] = {
                    key: usage[key]
                    for key in ("prompt_tokens", "completion_tokens", "total_tokens")
                    if key in usage
                }
        record["metadata"] = {key: metadata[key] for key in self.metadata_keys if key in metadata}
        if self.include_content:
            record["content"] = {
                "messages": [{"role": role, "text": text} for role, text in iter_message_texts(ctx.body)],
                "response": list(iter_response_texts(response)),
            }
        return record

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Queue the request's record for the file (see the module docstring)."""
        if self._fd is None or self._writer is None:
            raise RuntimeError(f"{self.name}: the log file is not open (on_load not awaited?)")
        line = _encode_line(self.record(ctx))
        if asyncio.get_running_loop() is not self._loop:
            # Another thread's loop (``run_in_thread``): the queue belongs to the server's
            # loop, so this line is written by itself, from a worker thread.
            await asyncio.to_thread(self._write, line)
            return PluginResponse.passthrough()
        self._queued.append(line)
        self._queued_bytes += len(line)
        self._wake.set()
        if self._queued_bytes > self.MAX_QUEUED_BYTES:
            self._room.clear()
            self._hurry.set()
            await self._room.wait()
        failure = self._failure
        if failure is not None:  # this line is queued too, and written once the file works again
            raise self._failed(failure) from failure
        return PluginResponse.passthrough()

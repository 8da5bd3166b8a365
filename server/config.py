"""The YAML config file: server settings and plugin entries, validated in one pass.

A bad file fails with one :class:`ConfigError` that names the file, each bad
entry and field, so nothing is half-applied.

Over 400 lines on purpose: one pass validates the whole file so a single ConfigError
lists every problem, and each setting's default, type and check sit together here
(server settings, plugin entries, breaker, WASM sandbox, streaming limits).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from ringd.sdk import PluginHook
from ringd.server.exceptions import ConfigError
from ringd.server.logs import LogFormat

DEFAULT_LISTEN = "127.0.0.1:50051"
_E = TypeVar("_E", bound=Enum)


class FailPolicy(Enum):
    """What a plugin failure does to its ring."""

    OPEN = "open"
    """Skip the failed plugin and go on with the ring, recording the bypass."""
    CLOSED = "closed"
    """Block the ring: 500 plugin_error, 504 plugin_timeout, 503 plugin_unavailable."""


DEFAULT_FAIL_POLICY: dict[PluginHook, FailPolicy] = {
    PluginHook.INGRESS: FailPolicy.CLOSED,
    PluginHook.PRE_FLIGHT: FailPolicy.CLOSED,
    PluginHook.ROUTING: FailPolicy.CLOSED,
    PluginHook.POST_FLIGHT: FailPolicy.OPEN,
    PluginHook.BACKGROUND: FailPolicy.OPEN,
}


class StreamMode(Enum):
    """When a POST_FLIGHT plugin runs on a streamed answer (entry field ``stream_mode``)."""

    AFTER = "after"
    """Default: a plugin with ``on_chunk`` runs on the text as it streams; one without
    runs on the assembled answer after the text was released (its BLOCK ends the
    stream with an error event)."""
    BUFFER = "buffer"
    """Runs ``execute`` on the assembled answer before any text is released (buffer
    until moderated), even when the plugin has ``on_chunk``."""


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Circuit breaker of one plugin (see :mod:`ringd.server.breaker`).

    It opens when, over the last ``window_s``, at least ``minimum_calls`` calls were
    made and a share of at least ``failure_rate`` failed. Open, the plugin counts as
    failed (503 under fail_policy closed) for a cooldown of ``cooldown_s``, doubled
    after each failed probe up to ``max_cooldown_s``; then ``half_open_calls`` probe
    calls go through and close it when they all succeed. ``enabled: false`` turns it off.
    """

    enabled: bool = True
    failure_rate: float = 0.5
    minimum_calls: int = 20
    window_s: float = 2.0
    cooldown_s: float = 0.25
    max_cooldown_s: float = 1.5
    half_open_calls: int = 3


class PluginType(Enum):
    """What an entry's ``entrypoint`` names: Python code, or a WebAssembly module."""

    PYTHON = "python"
    """``package.module:Class`` or ``path/file.py:Class``, run in-process."""
    WASM = "wasm"
    """``path/module.wasm`` (relative to the config file), an Extism plug-in run sandboxed."""


DEFAULT_WASM_MEMORY_MB = 64
DEFAULT_WASM_POOL_SIZE = 4
MAX_WASM_MEMORY_MB = 4096
MAX_WASM_POOL_SIZE = 64


@dataclass(frozen=True, slots=True)
class WasmSettings:
    """The sandbox of one ``type: wasm`` entry (its ``wasm:`` mapping).

    Nothing is granted by default: no WASI (so no files, clock, random or
    environment), no network, no host functions.
    """

    memory_limit_mb: int = DEFAULT_WASM_MEMORY_MB
    """Cap on the guest's linear memory, in MiB; a call that needs more fails (out of memory)."""
    pool_size: int = DEFAULT_WASM_POOL_SIZE
    """Instances (and threads) of the module: how many rings can run this plugin at once."""
    wasi: bool = False
    """Link WASI preview 1 (clock, random; files only under ``allowed_paths``; never the environment)."""
    allowed_hosts: tuple[str, ...] = ()
    """Hosts the guest may reach with Extism's HTTP request function (``*`` wildcards)."""
    allowed_paths: tuple[tuple[str, str], ...] = ()
    """(host folder, guest path) pairs the guest may open; needs ``wasi: true``."""


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """One plugin entry of the config file (LLMProxy's manifest fields plus ringd's)."""

    name: str
    entrypoint: str
    type: PluginType = PluginType.PYTHON
    hook: PluginHook | None = None
    priority: int = 100
    enabled: bool = True
    timeout_ms: int | None = None
    fail_policy: FailPolicy | None = None
    config: dict[str, Any] = field(default_factory=dict)
    circuit_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    run_in_thread: bool = False
    wasm: WasmSettings = field(default_factory=WasmSettings)
    stream_mode: StreamMode = StreamMode.AFTER


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS for the listen addresses: server cert and key; a client CA requires client certs."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Server settings of the config file's ``server:`` section."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    admin_listen: tuple[str, ...] = ()
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rings: int = 1024
    max_metadata_keys: int = 1024
    max_headers: int = 256
    max_json_depth: int = 64
    max_message_parts: int = 10_000
    """A request body's messages, the parts of their ``content`` lists and the entries of a
    ``prompt`` list, counted together; each plugin walks them in Python on the event loop,
    so 100,000 tiny ones held it for about 0.1 s per plugin."""
    reflection: bool = True
    admin_token: str | None = None
    grace_s: float = 10.0
    background_queue_size: int = 1024
    background_workers: int = 4
    deadline_margin_ms: float = 5.0
    stall_threshold_ms: float = 100.0
    tls: TlsSettings | None = None
    log_format: LogFormat = LogFormat.TEXT
    """``text`` or ``json`` lines on stderr; ``RINGD_LOG_FORMAT`` overrides, ``--log-format`` wins."""
    metrics_listen: str | None = None
    """``host:port`` of the Prometheus endpoint; off when unset. ``RINGD_METRICS_LISTEN`` overrides."""
    stream_max_held_chars: int = 65536
    """Characters one StreamRing call may hold back at once (all plugins, choices, buffered text)."""
    stream_max_pending_chunks: int = 4096
    """Chunks one StreamRing call may hold at once (a ``stream_mode: buffer`` plugin holds all)."""
    # --- issue 15 item 4: where plugin files may come from --------------------------------
    plugin_dirs: tuple[str, ...] = ()
    """Folders (besides the config file's own) that plugin files may be loaded from, resolved."""
    # --- issue 15 item 6: connections and streams (gRPC server options) --------------------
    max_connections: int = 256
    """Open connections per listen port; past it new connections are closed at once."""
    max_concurrent_streams: int = 1024
    """Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)."""
    max_open_calls: int = 2048
    """Calls open at once on the main listeners, from their headers on, whether or not their
    request has arrived; past it gRPC answers RESOURCE_EXHAUSTED at once. Keep it above
    ``max_concurrent_rings`` (whose refusal names the limit) and health checks."""
    max_connection_idle_s: float = 300.0
    """A connection with no call for this long is closed (GOAWAY); 0 keeps idle connections."""
    max_connection_age_s: float = 1800.0
    """A connection is asked to close (GOAWAY) after this long; 0 lets connections live forever."""
    max_connection_age_grace_s: float = 300.0
    """After that GOAWAY, calls in flight get this long to finish before the connection is cut."""
    keepalive_time_s: float = 60.0
    """The server pings an idle connection this often, and cuts it after 20 s without an answer."""
    min_client_ping_interval_s: float = 10.0
    """Clients that ping more often than this (or without calls) are sent GOAWAY after 2 strikes."""
    max_call_metadata_bytes: int = 16 * 1024
    """gRPC call metadata (HTTP/2 headers), counted as HPACK does (name + value + 32 per entry)."""


@dataclass(frozen=True, slots=True)
class RingdConfig:
    """A whole config file, validated."""

    version: str
    path: Path | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    store: str = "ringd.db"
    plugins: tuple[PluginEntry, ...] = ()

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the file are resolved against."""
        return self.path.parent if self.path is not None else Path.cwd()


_ENTRY_FIELDS = {
    "name", "hook", "entrypoint", "priority", "enabled", "timeout_ms", "fail_policy",
    "config", "circuit_breaker", "run_in_thread", "type", "wasm", "stream_mode",
}  # fmt: skip
_TOP_FIELDS = {"version", "server", "store", "plugins"}


class _Errors:
    """Collects every problem of a file, then raises them as one ConfigError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            lines = "\n  ".join(self.problems)
            raise ConfigError(f"invalid config {self.source}:\n  {lines}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _int(errors: _Errors, where: str, value: Any, *, minimum: int = 0) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        errors.add(where, f"must be an integer >= {minimum}, got {value!r} ({_type_name(value)})")
        return None
    return value


def _float(errors: _Errors, where: str, value: Any, *, minimum: float = 0.0) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        errors.add(where, f"must be a number >= {minimum}, got {value!r} ({_type_name(value)})")
        return None
    return float(value)


def _bool(errors: _Errors, where: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        errors.add(where, f"must be true or false, got {value!r} ({_type_name(value)})")
        return None
    return value


def _str(errors: _Errors, where: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(where, f"must be a non-empty string, got {value!r} ({_type_name(value)})")
        return None
    return value


def _secret(errors: _Errors, where: str, value: Any) -> str | None:
    """Like :func:`_str`, but a rejected value is never echoed: it may be the secret itself."""
    if not isinstance(value, str) or not value.strip():
        errors.add(where, f"must be a non-empty string, got {_type_name(value)} (value not shown)")
        return None
    return value


def _str_list(errors: _Errors, where: str, value: Any) -> tuple[str, ...] | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        errors.add(where, f"must be an address or a list of addresses, got {value!r}")
        return None
    return tuple(items)


def _enum(errors: _Errors, where: str, value: Any, kind: type[_E]) -> _E | None:
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        valid = ", ".join(str(member.value) for member in kind)
        errors.add(where, f"unknown value {value!r}; expected one of {valid}")
        return None


def _breaker(errors: _Errors, where: str, raw: Any) -> BreakerSettings:
    if raw is None:
        return BreakerSettings()
    if not isinstance(raw, dict):
        errors.add(where, f"must be a mapping, got {_type_name(raw)}")
        return BreakerSettings()
    defaults = BreakerSettings()
    known = set(BreakerSettings.__dataclass_fields__)
    for key in sorted(set(raw) - known):
        if key == "failure_threshold":
            errors.add(
                f"{where}.{key}",
                "replaced by failure_rate and minimum_calls (the breaker trips on a failure rate);"
                " 'enabled: false' turns it off",
            )
        else:
            errors.add(f"{where}.{key}", "unknown field")
    enabled = _bool(errors, f"{where}.enabled", raw.get("enabled", True))
    rate = _float(errors, f"{where}.failure_rate", raw.get("failure_rate", defaults.failure_rate))
    if rate is not None and not 0 < rate <= 1:
        errors.add(f"{where}.failure_rate", f"must be in (0, 1], got {rate!r}")
        rate = None
    minimum = _int(errors, f"{where}.minimum_calls", raw.get("minimum_calls", defaults.minimum_calls))
    probes = _int(
        errors, f"{where}.half_open_calls", raw.get("half_open_calls", defaults.half_open_calls), minimum=1
    )
    window = _float(errors, f"{where}.window_s", raw.get("window_s", defaults.window_s))
    if window == 0:
        errors.add(f"{where}.window_s", "must be more than 0, got 0")
        window = None
    cooldown = _float(errors, f"{where}.cooldown_s", raw.get("cooldown_s", defaults.cooldown_s))
    cooldown = defaults.cooldown_s if cooldown is None else cooldown
    ceiling: float | None = max(cooldown, defaults.max_cooldown_s)  # unless set: never below cooldown_s
    if "max_cooldown_s" in raw:
        ceiling = _float(errors, f"{where}.max_cooldown_s", raw["max_cooldown_s"])
    ceiling = max(cooldown, defaults.max_cooldown_s) if ceiling is None else ceiling
    if ceiling < cooldown:
        errors.add(f"{where}.max_cooldown_s", f"is {ceiling!r}, below cooldown_s {cooldown!r}")
    return BreakerSettings(
        enabled=enabled is not False,
        failure_rate=defaults.failure_rate if rate is None else rate,
        minimum_calls=defaults.minimum_calls if minimum is None else minimum,
        window_s=defaults.window_s if window is None else window,
        cooldown_s=cooldown,
        max_cooldown_s=max(ceiling, cooldown),
        half_open_calls=defaults.half_open_calls if probes is None else probes,
    )


def _wasm_settings(errors: _Errors, where: str, raw: Any, base_dir: Path | None) -> WasmSettings:
    if raw is None:
        return WasmSettings()
    if not isinstance(raw, dict):
        errors.add(where, f"must be a mapping, got {_type_name(raw)}")
        return WasmSettings()
    for key in sorted(set(raw) - set(WasmSettings.__dataclass_fields__)):
        errors.add(f"{where}.{key}", "unknown field")
    memory = _int(
        errors, f"{where}.memory_limit_mb", raw.get("memory_limit_mb", DEFAULT_WASM_MEMORY_MB), minimum=1
    )
    if memory is not None and memory > MAX_WASM_MEMORY_MB:
        errors.add(
            f"{where}.memory_limit_mb", f"must be at most {MAX_WASM_MEMORY_MB} (wasm32's 4 GiB), got {memory}"
        )
        memory = None
    pool = _int(errors, f"{where}.pool_size", raw.get("pool_size", DEFAULT_WASM_POOL_SIZE), minimum=1)
    if pool is not None and pool > MAX_WASM_POOL_SIZE:
        errors.add(
            f"{where}.pool_size", f"must be at most {MAX_WASM_POOL_SIZE} (one thread each), got {pool}"
        )
        pool = None
    wasi = _bool(errors, f"{where}.wasi", raw.get("wasi", False))
    hosts_raw = raw.get("allowed_hosts") or []
    hosts: tuple[str, ...] = ()
    if not isinstance(hosts_raw, list) or not all(isinstance(h, str) and h for h in hosts_raw):
        errors.add(f"{where}.allowed_hosts", f"must be a list of host names, got {hosts_raw!r}")
    else:
        hosts = tuple(hosts_raw)
    paths_raw = raw.get("allowed_paths") or {}
    paths: tuple[tuple[str, str], ...] = ()
    if not isinstance(paths_raw, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in paths_raw.items()
    ):
        errors.add(f"{where}.allowed_paths", f"must map host folders to guest paths, got {paths_raw!r}")
    else:
        # Host folders are relative to the config file, like the module itself.
        root = base_dir or Path.cwd()
        paths = tuple((str((root / host).resolve()), guest) for host, guest in sorted(paths_raw.items()))
    if paths and not wasi:
        errors.add(f"{where}.allowed_paths", "needs wasi: true (files are reached through WASI)")
    return WasmSettings(
        memory_limit_mb=memory if memory is not None else DEFAULT_WASM_MEMORY_MB,
        pool_size=pool if pool is not None else DEFAULT_WASM_POOL_SIZE,
        wasi=bool(wasi),
        allowed_hosts=hosts,
        allowed_paths=paths,
    )


def _entrypoint(errors: _Errors, where: str, entrypoint: Any, kind: PluginType | None) -> str | None:
    if kind is PluginType.WASM:
        if not isinstance(entrypoint, str) or not entrypoint.strip().endswith(".wasm"):
            errors.add(
                f"{where} field 'entrypoint'",
                f"a type: wasm entry names a module file 'path/to/module.wasm', got {entrypoint!r}",
            )
            return None
        return entrypoint.strip()
    if entrypoint is None:
        errors.add(
            f"{where} field 'entrypoint'",
            "missing (expected 'package.module:Class' or 'path/file.py:Class')",
        )
        return None
    if not isinstance(entrypoint, str) or ":" not in entrypoint or entrypoint.endswith(":"):
        hint = "; a .wasm module needs 'type: wasm'" if str(entrypoint).endswith(".wasm") else ""
        errors.add(
            f"{where} field 'entrypoint'",
            f"must look like 'package.module:Class' or 'path/file.py:Class', got {entrypoint!r}{hint}",
        )
        return None
    return entrypoint


def _plugin_entry(
    errors: _Errors, index: int, raw: Any, seen: set[str], base_dir: Path | None
) -> PluginEntry | None:
    where = f"plugins[{index}]"
    if not isinstance(raw, dict):
        errors.add(where, f"must be a mapping, got {_type_name(raw)}")
        return None
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"plugins[{index}] ({name!r})"
    for key in sorted(set(raw) - _ENTRY_FIELDS):
        errors.add(f"{where} field {key!r}", "unknown field")
    checked_name = _str(errors, f"{where} field 'name'", name)
    if checked_name is not None:
        if checked_name in seen:
            errors.add(f"{where} field 'name'", f"duplicate plugin name {checked_name!r}")
        seen.add(checked_name)
    kind = _enum(errors, f"{where} field 'type'", raw.get("type", "python"), PluginType)
    entrypoint = _entrypoint(errors, f"{where}", raw.get("entrypoint"), kind)
    wasm = WasmSettings()
    if kind is PluginType.WASM:
        wasm = _wasm_settings(errors, f"{where} field 'wasm'", raw.get("wasm"), base_dir)
        if raw.get("run_in_thread"):
            errors.add(
                f"{where} field 'run_in_thread'", "not for type: wasm (a WASM call always runs off the loop)"
            )
    elif raw.get("wasm") is not None:
        errors.add(f"{where} field 'wasm'", "only for type: wasm entries")
    hook = (
        None if raw.get("hook") is None else _enum(errors, f"{where} field 'hook'", raw["hook"], PluginHook)
    )
    priority = _int(errors, f"{where} field 'priority'", raw.get("priority", 100), minimum=-(2**31))
    enabled = _bool(errors, f"{where} field 'enabled'", raw.get("enabled", True))
    timeout_ms = None
    if raw.get("timeout_ms") is not None:
        timeout_ms = _int(errors, f"{where} field 'timeout_ms'", raw["timeout_ms"], minimum=1)
    fail_policy = None
    if raw.get("fail_policy") is not None:
        fail_policy = _enum(errors, f"{where} field 'fail_policy'", raw["fail_policy"], FailPolicy)
    # Only an absent or null `config` means "none": `config: []` or `config: ""` is a mistake.
    plugin_config = raw.get("config")
    if plugin_config is None:
        plugin_config = {}
    if not isinstance(plugin_config, dict):
        errors.add(f"{where} field 'config'", f"must be a mapping, got {_type_name(plugin_config)}")
        plugin_config = {}
    breaker = _breaker(errors, f"{where} field 'circuit_breaker'", raw.get("circuit_breaker"))
    run_in_thread = _bool(errors, f"{where} field 'run_in_thread'", raw.get("run_in_thread", False))
    stream_mode = StreamMode.AFTER
    if raw.get("stream_mode") is not None:
        stream_mode = (
            _enum(errors, f"{where} field 'stream_mode'", raw["stream_mode"], StreamMode) or StreamMode.AFTER
        )
        if hook is not None and hook is not PluginHook.POST_FLIGHT:
            errors.add(
                f"{where} field 'stream_mode'",
                f"applies to post_flight plugins only, this entry's hook is {hook.value!r}",
            )
    if checked_name is None or entrypoint is None or kind is None:
        return None
    return PluginEntry(
        name=checked_name,
        entrypoint=entrypoint,
        type=kind,
        hook=hook,
        priority=priority if priority is not None else 100,
        enabled=enabled if enabled is not None else True,
        timeout_ms=timeout_ms,
        fail_policy=fail_policy,
        config=plugin_config,
        circuit_breaker=breaker,
        run_in_thread=bool(run_in_thread),
        wasm=wasm,
        stream_mode=stream_mode,
    )


def _folders(errors: _Errors, where: str, value: Any, base_dir: Path | None) -> tuple[str, ...] | None:
    """Folders relative to the config file (or absolute), resolved (symlinks followed)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        errors.add(where, f"must be a folder or a list of folders, got {value!r}")
        return None
    root = base_dir or Path.cwd()
    return tuple(str((root / item).resolve()) for item in items)


def _outside_plugin_file(entry: PluginEntry, base_dir: Path | None, allowed: tuple[str, ...]) -> str | None:
    """Why ``entry``'s plugin file may not be loaded, or None when it may (or names no file).

    A file must resolve (symlinks followed) inside the config file's folder or one of
    ``server.plugin_dirs``: the config names the code, not the files around it.
    """
    target = entry.entrypoint
    if entry.type is PluginType.PYTHON:
        target = target.rpartition(":")[0]
        if not (target.endswith(".py") or "/" in target):
            return None  # an installed module: imported, not read from a path
    root = (base_dir or Path.cwd()).resolve()
    resolved = (root / target).resolve()
    folders = [root, *(Path(folder) for folder in allowed)]
    if any(resolved.is_relative_to(folder) for folder in folders):
        return None
    return (
        f"plugin file {target!r} resolves to {resolved}, outside the config file's folder {root}; "
        "list its folder in server.plugin_dirs to allow it"
    )


def _server(errors: _Errors, raw: Any, base_dir: Path | None = None) -> ServerSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.add("server", f"must be a mapping, got {_type_name(raw)}")
        return ServerSettings()
    defaults = ServerSettings()
    known = set(ServerSettings.__dataclass_fields__)
    for key in sorted(set(raw) - known):
        errors.add(f"server field {key!r}", "unknown field")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"server field {key!r}"
        if key in {"listen", "admin_listen"}:
            values[key] = _str_list(errors, where, value)
        elif key == "plugin_dirs":
            values[key] = _folders(errors, where, value, base_dir)
        elif (
            key
            in {
                "max_message_bytes",
                "max_concurrent_rings",
                "background_queue_size",
                "background_workers",
            }
            or key
            in {
                "max_metadata_keys",
                "max_headers",
                "max_json_depth",
                "max_message_parts",
                "max_connections",
                "max_concurrent_streams",
                "max_call_metadata_bytes",
                "max_open_calls",
            }
            or key.startswith("stream_max_")
        ):
            values[key] = _int(errors, where, value, minimum=1)
        elif key in {"grace_s", "deadline_margin_ms", "stall_threshold_ms"} or key in {
            "max_connection_idle_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "keepalive_time_s",
            "min_client_ping_interval_s",
        }:
            values[key] = _float(errors, where, value)
        elif key == "reflection":
            values[key] = _bool(errors, where, value)
        elif key == "admin_token":
            values[key] = None if value is None else _secret(errors, where, value)
        elif key == "tls":
            values[key] = _tls(errors, value)
        elif key == "log_format":
            values[key] = _enum(errors, where, value, LogFormat)
        elif key == "metrics_listen":
            values[key] = None if value is None else _host_port(errors, where, value)
    clean = {k: v for k, v in values.items() if v is not None or k == "admin_token"}
    settings = ServerSettings(**{**{f: getattr(defaults, f) for f in known}, **clean})
    if settings.admin_token is None and os.environ.get("RINGD_ADMIN_TOKEN"):
        settings = replace(settings, admin_token=os.environ["RINGD_ADMIN_TOKEN"])
    # Operations settings: the environment overrides the file, as RINGD_STORE does.
    if os.environ.get("RINGD_LOG_FORMAT"):
        log_format = _enum(errors, "RINGD_LOG_FORMAT", os.environ["RINGD_LOG_FORMAT"], LogFormat)
        settings = replace(settings, log_format=log_format or settings.log_format)
    if os.environ.get("RINGD_METRICS_LISTEN"):
        metrics = _host_port(errors, "RINGD_METRICS_LISTEN", os.environ["RINGD_METRICS_LISTEN"])
        settings = replace(settings, metrics_listen=metrics or settings.metrics_listen)
    return settings


def _host_port(errors: _Errors, where: str, value: Any) -> str | None:
    """A TCP ``host:port`` (port 0 picks a free one); unix sockets are not scraped."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and int(port) <= 65535:
            return value
    errors.add(where, f"must be host:port (for example 0.0.0.0:9464), got {value!r}")
    return None


def _tls(errors: _Errors, raw: Any) -> TlsSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.add("server field 'tls'", f"must be a mapping, got {_type_name(raw)}")
        return None
    for key in sorted(set(raw) - {"cert_file", "key_file", "client_ca_file"}):
        errors.add(f"server field 'tls.{key}'", "unknown field")
    cert = _str(errors, "server field 'tls.cert_file'", raw.get("cert_file"))
    key = _str(errors, "server field 'tls.key_file'", raw.get("key_file"))
    ca = raw.get("client_ca_file")
    if ca is not None:
        ca = _str(errors, "server field 'tls.client_ca_file'", ca)
    if cert is None or key is None:
        return None
    return TlsSettings(cert_file=cert, key_file=key, client_ca_file=ca)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's snippet of the line: it may hold a secret."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        return problem
    return type(exc).__name__


def parse_config(text: str, *, path: Path | None = None, source: str | None = None) -> RingdConfig:
    """Parse and validate the YAML ``text`` of a config file.

    Raises:
        ConfigError: one error listing every problem, each naming its entry and field.
    """
    label = source or (str(path) if path else "<config>")
    errors = _Errors(label)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid config {label}: not valid YAML: {_yaml_problem(exc)}") from None
    if raw is None:  # an empty file, or comments only: a truncated file must not run with no plugins
        raise ConfigError(
            f"invalid config {label}: the file is empty (no YAML document, or only a null one); "
            "write `plugins: []` for a ringd with no plugins"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {label}: the top level must be a mapping, got {_type_name(raw)}")
    for key in sorted(set(raw) - _TOP_FIELDS):
        errors.add(f"field {key!r}", "unknown top-level field")
    base_dir = path.parent if path else None
    server = _server(errors, raw.get("server"), base_dir)
    store = os.environ.get("RINGD_STORE") or raw.get("store", "ringd.db")
    store = _str(errors, "field 'store'", store) or "ringd.db"
    # Only an absent or null `plugins` means "no plugins": `plugins: {}` or `0` is a mistake.
    plugins_raw = raw.get("plugins")
    if plugins_raw is None:
        plugins_raw = []
    entries: list[PluginEntry] = []
    if not isinstance(plugins_raw, list):
        errors.add("field 'plugins'", f"must be a list of plugin entries, got {_type_name(plugins_raw)}")
    else:
        seen: set[str] = set()
        for index, item in enumerate(plugins_raw):
            entry = _plugin_entry(errors, index, item, seen, base_dir)
            if entry is None:
                continue
            outside = _outside_plugin_file(entry, base_dir, server.plugin_dirs)
            if outside is not None:
                errors.add(f"plugins[{index}] ({entry.name!r}) field 'entrypoint'", outside)
                continue
            entries.append(entry)
    declared = raw.get("version")
    if declared is not None and not isinstance(declared, str | int | float):
        errors.add("field 'version'", f"must be a string, got {_type_name(declared)}")
    errors.raise_if_any()
    version = str(declared) if declared is not None else hashlib.sha256(text.encode()).hexdigest()[:12]
    return RingdConfig(version=version, path=path, server=server, store=store, plugins=tuple(entries))


def load_config(path: str | Path) -> RingdConfig:
    """Read and validate the config file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    config_path = Path(path).resolve()
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ConfigError(
            f"cannot read config {path}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        ) from None
    return parse_config(text, path=config_path)


def default_config() -> RingdConfig:
    """The built-in default config: the default pipeline of built-in plugins."""
    text = resources.files("ringd.server").joinpath("default_config.yaml").read_text(encoding="utf-8")
    return parse_config(text, source="<built-in default config>")

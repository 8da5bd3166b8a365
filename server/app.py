"""Builds and runs the ringd server: store, engine, background queue, gRPC servers.

Everything is built here and passed down; nothing is global. Tests use
:func:`build_server` with ``listen=["127.0.0.1:0"]`` and read the bound addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from ringd.sdk import PluginState
from ringd.server import adminsock
from ringd.server.admission import ClosedGate, RingAdmission, TokenGate
from ringd.server.background import BackgroundQueue
from ringd.server.config import RingdConfig, ServerSettings
from ringd.server.convert import Limits
from ringd.server.engine import Engine, Generation, StreamLimits
from ringd.server.health import HealthServicer
from ringd.server.metrics import MetricsEndpoint, serve_metrics
from ringd.server.reflection import default_index, enable_reflection
from ringd.server.servicers import ADMIN_SERVICE, ENGINE_SERVICE, AdminServicer, EngineServicer, rpc_handler
from ringd.server.store import SqliteStore, open_store
from ringd.server.store_redis import RedisStore
from ringd.server.telemetry import RingTracer, tracer_provider_from_env
from ringd.server.watchdog import StallWatchdog
from ringd.server.workers import notify_siblings

_log = logging.getLogger("ringd.server")

HEALTH_SERVICE = "grpc.health.v1.Health"


class RingdServer:
    """One ringd process: call :meth:`start`, then :meth:`stop` (or :meth:`serve_forever`)."""

    def __init__(
        self,
        config: RingdConfig,
        *,
        config_loader: Callable[[], RingdConfig] | None = None,
        listen: Sequence[str] | None = None,
        admin_listen: Sequence[str] | None = None,
        tracer_provider: TracerProvider | None = None,
        reuse_port: bool = False,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self._reuse_port = reuse_port
        self._worker = worker
        self._config_loader = config_loader
        settings = config.server
        self.listen = tuple(listen) if listen else settings.listen
        self.admin_listen = tuple(admin_listen) if admin_listen else settings.admin_listen
        self._tracer_provider = tracer_provider
        self.addresses: list[str] = []
        self.admin_addresses: list[str] = []
        """Where the admin service is served when not on the main addresses (explicit, or the
        default unix socket of :mod:`ringd.server.adminsock` when no admin token is set)."""
        self.state = PluginState()
        self.engine = Engine(self.state)
        self.health = HealthServicer()
        self._servers: list[grpc.aio.Server] = []
        self._background: BackgroundQueue | None = None
        self._store: SqliteStore | RedisStore | None = None
        self.watchdog: StallWatchdog | None = None
        self._admission: RingAdmission | None = None
        self._stopped = False
        self._default_admin_socket: Path | None = None
        self.metrics: MetricsEndpoint | None = None  # issue 14: the Prometheus endpoint, if configured
        self.reloads = {"ok": 0, "failed": 0}  # issue 14: reloads by result, for the metrics endpoint

    @property
    def settings(self) -> ServerSettings:
        return self.config.server

    @property
    def inflight_rings(self) -> int | None:
        """Rings being served now (None before start)."""
        return self._admission.inflight if self._admission is not None else None

    @property
    def background(self) -> BackgroundQueue:
        if self._background is None:
            raise RuntimeError("server not started")
        return self._background

    async def start(self) -> None:
        """Open the store, load the plugins, bind every address and start serving.

        A failure (a taken port, an unreachable store) undoes what was started and raises.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        settings = self.settings
        store = await open_store(self.config.store, base_dir=self.config.base_dir)
        self._store = store
        self.state.extra["store"] = store
        self.state.config.update({"config_version": self.config.version})
        await self.engine.start(self.config)
        if settings.stall_threshold_ms > 0:
            self.watchdog = StallWatchdog(self.engine, settings.stall_threshold_ms / 1000.0)
            self.watchdog.start()
        self._background = BackgroundQueue(
            self.engine, size=settings.background_queue_size, workers=settings.background_workers
        )
        tracer = RingTracer(self._tracer_provider)
        engine_servicer = EngineServicer(
            self.engine,
            self._background,
            tracer,
            limits=Limits(
                max_metadata_keys=settings.max_metadata_keys,
                max_json_depth=settings.max_json_depth,
                max_headers=settings.max_headers,
                max_message_parts=settings.max_message_parts,
            ),
            deadline_margin_s=settings.deadline_margin_ms / 1000.0,
            stream_limits=StreamLimits(
                max_held_chars=settings.stream_max_held_chars,
                max_pending_chunks=settings.stream_max_pending_chunks,
                max_answer_chars=settings.max_message_bytes,
            ),
        )
        self._admission = RingAdmission(settings.max_concurrent_rings)
        admin_servicer = AdminServicer(self.engine, self._admin_reload)
        max_bytes = settings.max_message_bytes
        options = server_options(settings, reuse_port=self._reuse_port)
        # Calls open at once on the main listeners, counted from their headers: a call whose
        # request never finishes (slowloris) holds a slot, so this bounds their memory.
        main = grpc.aio.server(options=options, maximum_concurrent_rpcs=settings.max_open_calls)
        limit = settings.max_call_metadata_bytes
        main.add_generic_rpc_handlers(
            (
                rpc_handler(
                    ENGINE_SERVICE,
                    engine_servicer,
                    self._admission,
                    max_answer_bytes=max_bytes,
                    max_call_metadata_bytes=limit,
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        services = [ENGINE_SERVICE.full_name, HEALTH_SERVICE]
        # Issue 15 item 4: without a token and without admin_listen, the admin service is
        # served on a unix socket only (0600, in a 0700 folder); the main listeners refuse it.
        closed = settings.admin_token is None and not self.admin_listen
        admin = main
        if self.admin_listen or closed:
            admin = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, admin)
            self._servers.append(admin)
        admin_gate = TokenGate(settings.admin_token)
        admin.add_generic_rpc_handlers(
            (
                rpc_handler(
                    ADMIN_SERVICE,
                    admin_servicer,
                    admin_gate,
                    max_answer_bytes=max_bytes,
                    max_call_metadata_bytes=limit,
                ),
            )
        )
        if admin is main:
            services.append(ADMIN_SERVICE.full_name)
        if settings.reflection:
            index = default_index()
            enable_reflection(services, main, index)
            if admin is not main:
                enable_reflection([ADMIN_SERVICE.full_name, HEALTH_SERVICE], admin, index)
        self._servers.insert(0, main)
        self.addresses = [self._bind(main, address) for address in self.listen]
        admin_listen = list(self.admin_listen)
        if closed:
            socket_path = adminsock.default_admin_socket(
                adminsock.main_key_address(self.addresses), self._worker
            )
            adminsock.prepare(socket_path)
            admin_listen = [f"unix:{socket_path}"]
            self._default_admin_socket = socket_path
            refusal = ClosedGate(
                f"the admin service is not served on this address: no server.admin_token is set, so it "
                f"is served only on the unix socket unix:{socket_path} (`ringd reload` and `ringd plugins` "
                "find it); set server.admin_token (or RINGD_ADMIN_TOKEN) to serve it here with a token"
            )
            main.add_generic_rpc_handlers(
                (rpc_handler(ADMIN_SERVICE, admin_servicer, refusal, max_answer_bytes=max_bytes),)
            )
        if admin is not main:
            self.admin_addresses = [self._bind(admin, address) for address in admin_listen]
        exposed = [a for a in (self.admin_addresses or self.addresses) if not local_only(a)]
        if settings.admin_token is None and exposed:
            _log.warning(
                "the admin service on %s has no admin_token: anyone who can reach it can reload "
                "the config and disable plugins; set server.admin_token (or RINGD_ADMIN_TOKEN), "
                "or serve it on a unix socket (server.admin_listen: unix:/path)",
                ", ".join(exposed),
            )
        for server in self._servers:
            await server.start()
        for address in self.admin_addresses:
            if address.startswith("unix:"):  # owner only, whatever the umask
                os.chmod(address.removeprefix("unix:").removeprefix("//"), 0o600)
        if settings.metrics_listen:  # issue 14: scrape-time metrics, off unless configured
            self.metrics = await serve_metrics(self, settings.metrics_listen)
        for service in ("", ENGINE_SERVICE.full_name, ADMIN_SERVICE.full_name):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _bind(self, server: grpc.aio.Server, address: str) -> str:
        tls = self.settings.tls
        if address.startswith("unix:"):
            path = address.removeprefix("unix:").removeprefix("//")
            with contextlib.suppress(FileNotFoundError):
                if Path(path).is_socket():
                    os.unlink(path)
        if tls is not None and not address.startswith("unix:"):
            credentials = _server_credentials(tls.cert_file, tls.key_file, tls.client_ca_file)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if address.startswith("unix:"):
            return address
        host = address.rsplit(":", 1)[0]
        return f"{host}:{port}"

    async def reload(self) -> Generation:
        """Re-read the config and hot-swap the plugins (server settings need a restart)."""
        loader = self._config_loader
        try:
            config = await asyncio.to_thread(loader) if loader is not None else self.config
            generation = await self.engine.reload(config)
        except Exception:  # counted for the metrics endpoint, then raised unchanged
            self.reloads["failed"] += 1
            raise
        self.reloads["ok"] += 1
        self.config = config
        return generation

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new calls, finish in-flight and background work."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        deadline = asyncio.get_running_loop().time() + grace
        await self.health.enter_graceful_shutdown()
        if self._admission is not None:
            # Refuse new rings with UNAVAILABLE (a clear "go elsewhere") while the
            # connections are still up, and let the rings in flight finish.
            await self._admission.drain(grace)
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        await asyncio.gather(*(server.stop(remaining) for server in self._servers))
        if self._default_admin_socket is not None:  # ours alone: prepare() refused a live one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._default_admin_socket)
        if self._background is not None:
            await self._background.drain(grace)
        if self.metrics is not None:  # issue 14: before the engine, which a scrape reads
            await self.metrics.close()
        await self.engine.close(grace)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self._store is not None:
            await self._store.close()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT (then drain and stop); SIGHUP reloads the config.

        ``on_ready`` runs once the signal handlers are in place, so whoever it tells
        the server is up may signal it at once.
        """
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_logged()))
        if on_ready is not None:
            on_ready()
        try:
            await stopping.wait()
            _log.info("shutting down: draining for up to %.1f s", self.settings.grace_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def _admin_reload(self) -> Generation:
        """A reload asked over the admin RPC; under --workers the sibling workers follow."""
        generation = await self.reload()
        notify_siblings()
        return generation

    async def _reload_logged(self) -> None:
        try:
            generation = await self.reload()
            _log.info(
                "SIGHUP: now serving generation %d (config %s)",
                generation.number,
                generation.version,
            )
        except Exception as exc:  # a failed reload keeps the old generation; say why in the log
            _log.error("SIGHUP reload rejected: %s", exc)


def local_only(address: str) -> bool:
    """True when ``address`` cannot be reached from other machines: a unix socket or loopback.

    The host is parsed, not matched as text: ``localhost`` in any case and loopback
    IPs (``127.0.0.0/8``, ``[::1]``, ``::ffff:127.0.0.1``) are local; any other name
    (``127.evil.example.com``), a wildcard (``0.0.0.0``, ``[::]``) or another IP is
    exposed. An abstract unix socket (``unix-abstract:``) has no file permissions, so
    any process in the network namespace can connect: exposed.
    """
    if address.startswith("unix:"):
        return True
    for scheme in ("ipv4:", "ipv6:", "dns:///"):
        address = address.removeprefix(scheme)
    if address.startswith("unix-abstract:"):
        return False
    host = address.rsplit(":", 1)[0] if not address.endswith("]") else address
    host = host.strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def server_options(settings: ServerSettings, *, reuse_port: bool) -> list[tuple[str, int]]:
    """The gRPC server options of every listener (issue 15 item 6: connection limits).

    Bounds what a caller can hold open: connections per port, streams per connection,
    idle and old connections (GOAWAY, then a grace for calls in flight), pings (the
    server pings to find dead peers; clients that ping too often are cut off), and
    call metadata (core's hard limit sits above ``max_call_metadata_bytes``, which the
    admission check answers with a message). Core's queue of calls the server has not
    yet picked up holds twice ``max_open_calls`` (gRPC's default, about 1,000, answered a
    burst past it CANCELLED with no message), so past the in-flight limit a call is
    RESOURCE_EXHAUSTED with a message.
    """
    max_bytes = settings.max_message_bytes
    pending = 2 * settings.max_open_calls
    metadata_hard_limit = max(4 * settings.max_call_metadata_bytes, 64 * 1024)
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        # Only `--workers` shares a port; otherwise a second server on a taken port must fail.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_metadata_size", metadata_hard_limit),
        ("grpc.absolute_max_metadata_size", metadata_hard_limit),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
    ]


_NEVER_MS = 2**31 - 1
"""gRPC core's "infinite" for its millisecond options."""


def _ms(seconds: float) -> int:
    """Seconds as a core option in ms; 0 means "never" (core's INT_MAX)."""
    return min(_NEVER_MS, int(seconds * 1000)) if seconds > 0 else _NEVER_MS


def _server_credentials(cert_file: str, key_file: str, client_ca_file: str | None) -> grpc.ServerCredentials:
    key = Path(key_file).read_bytes()
    cert = Path(cert_file).read_bytes()
    if client_ca_file:
        ca = Path(client_ca_file).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


async def build_server(
    config: RingdConfig,
    *,
    config_loader: Callable[[], RingdConfig] | None = None,
    listen: Sequence[str] | None = None,
    admin_listen: Sequence[str] | None = None,
    tracer_provider: TracerProvider | None = None,
    tracing_from_env: bool = False,
    reuse_port: bool = False,
    worker: int | None = None,
) -> RingdServer:
    """Build and start a server; its bound addresses are in ``server.addresses``.

    ``reuse_port`` lets several processes bind the same port (``ringd serve --workers``);
    otherwise binding a port another server holds fails. ``worker`` is the index of a
    ``--workers`` process: its default admin socket is ``admin-<port>.<worker>.sock``.
    """
    provider = tracer_provider
    if provider is None and tracing_from_env:
        provider = tracer_provider_from_env()
    server = RingdServer(
        config,
        config_loader=config_loader,
        listen=listen,
        admin_listen=admin_listen,
        tracer_provider=provider,
        reuse_port=reuse_port,
        worker=worker,
    )
    await server.start()
    return server

"""Builds and runs the ringd server: store, engine, background queue, gRPC servers.

Everything is built here and passed down; nothing is global. Tests use
:func:`build_server` with ``listen=["127.0.0.1:0"]`` and read the bound addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from ringd.sdk import PluginState
from ringd.server.admission import RingAdmission, TokenGate
from ringd.server.background import BackgroundQueue
from ringd.server.config import RingdConfig, ServerSettings
from ringd.server.convert import Limits
from ringd.server.engine import Engine, Generation
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
    ) -> None:
        self.config = config
        self._reuse_port = reuse_port
        self._config_loader = config_loader
        settings = config.server
        self.listen = tuple(listen) if listen else settings.listen
        self.admin_listen = tuple(admin_listen) if admin_listen else settings.admin_listen
        self._tracer_provider = tracer_provider
        self.addresses: list[str] = []
        self.admin_addresses: list[str] = []
        self.state = PluginState()
        self.engine = Engine(self.state)
        self.health = HealthServicer()
        self._servers: list[grpc.aio.Server] = []
        self._background: BackgroundQueue | None = None
        self._store: SqliteStore | RedisStore | None = None
        self.watchdog: StallWatchdog | None = None
        self._admission: RingAdmission | None = None
        self._stopped = False
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
            ),
            deadline_margin_s=settings.deadline_margin_ms / 1000.0,
        )
        self._admission = RingAdmission(settings.max_concurrent_rings)
        admin_servicer = AdminServicer(self.engine, self._admin_reload)
        max_bytes = settings.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Only `--workers` shares a port; otherwise a second server on a taken port must fail.
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
        ]
        main = grpc.aio.server(options=options)
        main.add_generic_rpc_handlers(
            (rpc_handler(ENGINE_SERVICE, engine_servicer, self._admission, max_answer_bytes=max_bytes),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        services = [ENGINE_SERVICE.full_name, HEALTH_SERVICE]
        admin = main
        if self.admin_listen:
            admin = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, admin)
            self._servers.append(admin)
        admin_gate = TokenGate(settings.admin_token)
        admin.add_generic_rpc_handlers(
            (rpc_handler(ADMIN_SERVICE, admin_servicer, admin_gate, max_answer_bytes=max_bytes),)
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
        if admin is not main:
            self.admin_addresses = [self._bind(admin, address) for address in self.admin_listen]
        exposed = [a for a in (self.admin_addresses or self.addresses) if not _local_only(a)]
        if settings.admin_token is None and exposed:
            _log.warning(
                "the admin service on %s has no admin_token: anyone who can reach it can reload "
                "the config and disable plugins; set server.admin_token (or RINGD_ADMIN_TOKEN), "
                "or serve it on its own address (server.admin_listen: unix:/path)",
                ", ".join(exposed),
            )
        for server in self._servers:
            await server.start()
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


def _local_only(address: str) -> bool:
    """True for a unix socket or a loopback address: not reachable from other machines."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in {"localhost", "::1"} or host.startswith("127.")


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
) -> RingdServer:
    """Build and start a server; its bound addresses are in ``server.addresses``.

    ``reuse_port`` lets several processes bind the same port (``ringd serve --workers``);
    otherwise binding a port another server holds fails.
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
    )
    await server.start()
    return server

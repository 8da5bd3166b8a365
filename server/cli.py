"""The ``ringd`` command: serve, check a config, and talk to a running server.

Client commands print JSON on stdout (so they pipe into ``jq``); a failed call
exits non-zero with the gRPC status and message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from ringd.sdk import StoreError
from ringd.server.config import (
    DEFAULT_LISTEN,
    RingdConfig,
    default_config,
    load_config,
)
from ringd.server.exceptions import ConfigError
from ringd.server.launch import Ready, check_ready_fd, write_ready
from ringd.server.logs import configure as configure_logs
from ringd.server.workers import WORKER_ENV

from ringd import __version__

DEFAULT_TARGET = os.environ.get("RINGD_TARGET", DEFAULT_LISTEN)


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _object_arg(text: str) -> dict[str, Any]:
    value = _json_arg(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("headers look like 'name: value'")
    return name.strip().lower(), value.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringd", description="The plugin engine LLM gateways call over gRPC."
    )
    parser.add_argument("--version", action="version", version=f"ringd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the plugin rings over gRPC")
    serve.add_argument("--config", type=Path, help="config file (default: the built-in default pipeline)")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help=f"host:port or unix:/path, repeatable (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--admin-listen", action="append", metavar="ADDR", help="serve the admin service here only"
    )
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the listen port (default 1)")
    serve.add_argument(
        "--ready-fd",
        type=int,
        metavar="N",
        help="once serving, write one JSON line to file descriptor N and close it: "
        '{"ready": true, "pid": ..., "listen": [bound addresses], "admin_listen": [...], '
        '"config_version": ..., "generation": ..., "workers": [pids]} (see the README)',
    )
    serve.add_argument("--log-level", default=os.environ.get("RINGD_LOG_LEVEL", "INFO"))
    # --- issue 14 (operations): log format and metrics address --------------------------
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text (default) or json: one JSON object per line (server.log_format, $RINGD_LOG_FORMAT)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (server.metrics_listen, "
        "$RINGD_METRICS_LISTEN; off unless set)",
    )
    # --- end issue 14 ------------------------------------------------------------------

    check = commands.add_parser("check-config", help="validate a config file and load its plugins, then exit")
    check.add_argument("path", type=Path)

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        _client_options(sub)
        return sub

    plugins = commands.add_parser("plugins", help="list, enable or disable plugins of a running server")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", required=True)
    listing = plugin_commands.add_parser("list", help="the plugins of each ring with status and stats")
    listing.add_argument("--ring", help="only this ring")
    _client_options(listing)
    for verb in ("enable", "disable"):
        toggle = plugin_commands.add_parser(verb, help=f"{verb} one plugin until the next reload")
        toggle.add_argument("name")
        _client_options(toggle)

    client_command("reload", "reload the server's config (hot swap)")
    admin_socket = commands.add_parser(
        "admin-socket",
        help="print the unix socket a server without an admin token serves its admin service on",
    )
    admin_socket.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"the server's address (default {DEFAULT_TARGET})"
    )

    # issue 14: `ringd health` runs from ringd.server.entry without this module; listed for --help.
    from ringd.server.health_cli import add_arguments as health_arguments

    health_arguments(commands.add_parser("health", help="exit 0 if a server's grpc.health.v1 says SERVING"))

    ring = client_command("ring", "run one ring and print the outcome as JSON")
    ring.add_argument("ring", help="ingress, pre_flight, routing, post_flight or background")
    ring.add_argument("--body", type=_object_arg, default={}, help="request body (JSON object)")
    ring.add_argument("--metadata", type=_object_arg, default=None, help="metadata (JSON object)")
    ring.add_argument("--response", type=_object_arg, default=None, help="upstream answer (JSON object)")
    ring.add_argument(
        "--header",
        type=_header_arg,
        action="append",
        default=[],
        help="request header 'name: value'",
    )
    ring.add_argument("--request-id", default="")
    ring.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    parser.add_argument(
        "--token",
        default=os.environ.get("RINGD_ADMIN_TOKEN"),
        help="admin bearer token (default $RINGD_ADMIN_TOKEN)",
    )


def _print_json(data: Any) -> None:
    try:
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (head, jq -e ...) stopped early: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet


def _admin_targets(target: str) -> list[str]:
    """Where to send admin calls for the server at ``target``.

    Its default admin socket when it serves one (no admin token; one per worker under
    ``--workers``, see :mod:`ringd.server.adminsock`), else ``target`` itself (a server
    with a token serves admin there; an explicit ``admin_listen`` address is given as
    ``--target``).
    """
    from ringd.server.adminsock import find_admin_sockets

    sockets = find_admin_sockets(target)
    return [f"unix:{path}" for path in sockets] or [target]


def _run_client(call: Callable[[Any], Any], target: str | list[str], token: str | None) -> int:
    """Run ``call`` on each target (printing the first answer); exit 1 on any failure."""
    from ringd.client import Client

    targets = [target] if isinstance(target, str) else target
    try:
        answers = []
        for each in targets:
            with Client(each, admin_token=token) as client:
                answers.append(call(client))
        _print_json(answers[0])
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"ringd: {code.name if code else 'ERROR'}: {detail}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"ringd: {exc}", file=sys.stderr)
        return 2
    return 0


_CALLER_HEADER_LOGGERS = ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext")


def _serve(args: argparse.Namespace) -> int:
    from ringd.server.app import build_server
    from ringd.server.workers import WORKER_ENV

    # --- issue 14: flags become the environment, so --workers' children (which get the
    # environment, not these flags) and the config parser see the same choice.
    if args.log_format:
        os.environ["RINGD_LOG_FORMAT"] = args.log_format
    if args.metrics_listen:
        os.environ["RINGD_METRICS_LISTEN"] = args.metrics_listen
    if args.workers < 1:
        print(f"ringd: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.ready_fd is not None and (problem := check_ready_fd(args.ready_fd)):
        print(f"ringd: {problem}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(f"ringd: {exc}", file=sys.stderr)
        return 2
    configure_logs(args.log_level, config.server.log_format)
    # --- end issue 14
    # OpenTelemetry warns, quoting it, about every malformed traceparent/tracestate a caller
    # sends: any caller could flood the log with text of its choosing. The header is ignored.
    for name in _CALLER_HEADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    loader: Callable[[], RingdConfig] = (lambda: load_config(args.config)) if args.config else default_config
    if args.workers > 1:
        from ringd.server.workers import serve_workers

        return serve_workers(args, config)

    async def main() -> None:
        server = await build_server(
            config,
            config_loader=loader,
            listen=args.listen,
            admin_listen=args.admin_listen,
            tracing_from_env=True,
            # A worker of `--workers` shares its port with its siblings.
            reuse_port=bool(os.environ.get(WORKER_ENV)),
            worker=int(os.environ[WORKER_ENV]) if os.environ.get(WORKER_ENV, "").isdigit() else None,
        )
        await server.serve_forever(on_ready=lambda: _announce(server, args.ready_fd))

    _install_event_loop()
    try:
        asyncio.run(main())
    except (OSError, StoreError, RuntimeError) as exc:  # a port in use, an unreachable store
        print(f"ringd: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _install_event_loop() -> None:
    """Use uvloop when it is installed and not turned off (RINGD_UVLOOP=0)."""
    if os.environ.get("RINGD_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _announce(server: Any, ready_fd: int | None) -> None:
    """The human banner on stdout (once per supervisor), then the ready signal on ``ready_fd``."""
    from ringd.sdk import PluginHook

    generation = server.engine.generation
    ready = Ready(
        pid=os.getpid(),
        listen=tuple(server.addresses),
        admin_listen=tuple(server.admin_addresses),
        config_version=generation.version,
        generation=generation.number,
        version=__version__,
        workers=(os.getpid(),),
    )
    if os.environ.get(WORKER_ENV, "0") != "0":  # a --workers sibling: worker 0 prints the banner
        if ready_fd is not None:
            write_ready(ready_fd, ready)
        return
    out = [f"ringd {__version__}: config {generation.version}, generation {generation.number}"]
    out.extend(f"listening on {address}" for address in server.addresses)
    out.extend(f"admin listening on {address}" for address in server.admin_addresses)
    if server.metrics is not None:  # issue 14
        out.append(f"metrics on http://{server.metrics.address}/metrics")
    for hook in PluginHook:
        names = []
        for slot in generation.rings[hook]:
            label = slot.name
            if slot.loaded.load_error:
                label += f" (FAILED: {slot.loaded.load_error})"
            elif not slot.enabled:
                label += " (disabled)"
            names.append(label)
        out.append(f"  {hook.value:<11} {', '.join(names) if names else '-'}")
    print("\n".join(out), flush=True)
    if ready_fd is not None:
        write_ready(ready_fd, ready)


def _check_config(path: Path) -> int:
    from ringd.server.engine import Engine

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"ringd: {exc}", file=sys.stderr)
        return 2

    async def load() -> dict[str, str]:
        engine = Engine()
        generation = await engine.start(config)
        failed = {s.name: s.loaded.load_error or "" for s in generation.slots.values() if s.loaded.load_error}
        await engine.close(0)
        return failed

    failed = asyncio.run(load())
    for name, error in failed.items():
        print(f"ringd: {path}: plugin {name!r}: {error}", file=sys.stderr)
    if failed:
        return 1
    print(f"{path}: ok, {len(config.plugins)} plugins, version {config.version}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ringd`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "health":  # issue 14: the console script goes to health_cli directly
        from ringd.server.health_cli import main as health_main

        given = list(sys.argv[1:] if argv is None else argv)
        return health_main(given[given.index("health") + 1 :])
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "admin-socket":
        from ringd.server.adminsock import default_admin_socket, find_admin_sockets

        live = find_admin_sockets(args.target)
        for path in live or [default_admin_socket(args.target)]:
            print(path)
        return 0 if live else 1
    if args.command == "reload":
        # One worker is enough: a worker passes a reload on to its siblings (--workers).
        return _run_client(lambda c: c.reload(), _admin_targets(args.target)[0], args.token)
    if args.command == "plugins":
        if args.plugins_command == "list":  # the stats are those of the worker that answers
            target = _admin_targets(args.target)[0]
            return _run_client(lambda c: c.list_plugins(args.ring), target, args.token)
        enabled = args.plugins_command == "enable"
        # Enabled/disabled is per process: every worker's socket gets the call.
        return _run_client(
            lambda c: c.set_plugin_enabled(args.name, enabled), _admin_targets(args.target), args.token
        )
    if args.command == "ring":
        return _run_client(
            lambda c: c.execute_ring(
                args.ring,
                args.body,
                metadata=args.metadata,
                response=args.response,
                headers=dict(args.header),
                request_id=args.request_id,
                timeout=args.timeout,
            ).to_dict(),
            args.target,
            args.token,
        )
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())

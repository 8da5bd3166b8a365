"""``ringd health``: ask a ringd its ``grpc.health.v1`` status, for container probes.

A probe runs every few seconds, so this path imports grpc and the health stubs and
nothing else of ringd (no config, engine, OpenTelemetry or YAML): ``ringd``'s entry
point sends ``ringd health`` here before the rest of the CLI is imported.

Exit codes: 0 SERVING; 1 answered but not SERVING (draining, unknown service);
3 not reachable in time (nothing listening, wrong address, TLS mismatch); 2 a
usage error (argparse's code).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 3
DEFAULT_TARGET = "127.0.0.1:50051"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ringd health`` (also shown by ``ringd --help``)."""
    target = os.environ.get("RINGD_TARGET", DEFAULT_TARGET)
    parser.add_argument(
        "--target",
        default=target,
        help=f"host:port or unix:/path of the server (default {target}, $RINGD_TARGET)",
    )
    parser.add_argument(
        "--service",
        default="",
        help="service name to ask about (default: the whole server)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for the answer, connecting included (default 2)",
    )


def check(target: str, service: str = "", timeout_s: float = 2.0) -> tuple[int, str]:
    """Ask ``target`` once; returns the exit code and a one-line report."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(target) as channel:  # unix:/p and unix:///p both work
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code is grpc.StatusCode.NOT_FOUND:
                return EXIT_NOT_SERVING, f"{target}: unknown service {service!r}"
            name = code.name if code is not None else "ERROR"
            return EXIT_UNREACHABLE, f"{target}: not reachable ({name}: {exc.details() or 'no answer'})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    label = f"{target}{f' service {service!r}' if service else ''}: {status}"
    return (EXIT_SERVING if reply.status == serving else EXIT_NOT_SERVING), label


def main(argv: Sequence[str] | None = None) -> int:
    """``ringd health [--target ADDR] [--service NAME] [--timeout S]``."""
    parser = argparse.ArgumentParser(
        prog="ringd health", description="Ask a ringd server its grpc.health.v1 status."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    code, report = check(args.target, args.service, args.timeout)
    print(f"ringd health: {report}", file=sys.stdout if code == EXIT_SERVING else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``ringd serve`` as a child process, for the tests that kill it or call it from outside."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.rpc import BIN

LISTENING = re.compile(r"^listening on (\S+:\d+)$")


class RingdProcess:
    """``ringd serve --config PATH --listen 127.0.0.1:0`` as a child process.

    :meth:`start` waits for the ``listening on`` line and keeps the bound address.
    stdout and stderr (the log) go to files next to the config, so nothing can fill
    a pipe. ``env`` adds to a copy of the environment without ringd's own settings.
    """

    def __init__(self, config_path: Path, *, env: dict[str, str] | None = None, name: str = "ringd") -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / f"{name}.stderr"
        self.stdout_path = config_path.parent / f"{name}.stdout"
        # RINGD_RUNTIME_DIR stays: the test's own folder for the default admin socket.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RINGD_", "OTEL_")) or k == "RINGD_RUNTIME_DIR"
        }
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, timeout_s: float = 20.0) -> RingdProcess:
        with self.log_path.open("ab") as log, self.stdout_path.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "ringd"), "serve", "--config", str(self.config_path), "--listen", "127.0.0.1:0"],
                stdout=out,
                stderr=log,
                env=self.env,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            announced = self.stdout_path.read_text(errors="replace")
            for line in announced.splitlines():
                match = LISTENING.match(line.strip())
                if match:
                    self.address = match.group(1)
                    return self
            if self.process.poll() is not None:
                raise AssertionError(f"ringd exited before listening:\n{announced}{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"ringd did not listen within {timeout_s} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait for the drain; SIGKILL if it does not exit. Returns the exit status."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode


def health_check(target: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    """The overall health status name (SERVING, NOT_SERVING), or the gRPC code name if refused."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as refused:
            return refused.code().name  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

"""``ringd serve`` as a child process: :class:`RingdProcess` and the ``ringd_process`` fixture.

The process is started through :func:`ringd.server.launch.start_serve`, the one
implementation of "start ``ringd serve`` and wait until it serves" (its ready signal,
``--ready-fd``). stdout and stderr go to files under the test's folder, so nothing
can fill a pipe, and a start that fails or times out quotes the process's stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ringd.server.launch import Ready, ServeFailed, start_serve, stop_process

START_TIMEOUT_S = 60.0  # a bound for a loaded machine, not an expectation: a start takes ~1 s


class RingdProcess:
    """One ``ringd serve ARGS`` child process.

    ``env`` adds to a copy of the environment without ringd's own settings (``RINGD_*``)
    and OpenTelemetry's (``OTEL_*``), which would override the test's config.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        name: str = "ringd",
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.log_path = cwd / f"{name}.stderr"
        self.stdout_path = cwd / f"{name}.stdout"
        # RINGD_RUNTIME_DIR stays: the test's own folder for the default admin socket.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RINGD_", "OTEL_")) or k == "RINGD_RUNTIME_DIR"
        }
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: Ready | None = None

    @classmethod
    def for_config(
        cls, config_path: Path, *extra: str, env: dict[str, str] | None = None, name: str = "ringd"
    ) -> RingdProcess:
        """``ringd serve --config PATH --listen 127.0.0.1:0 EXTRA``, its files beside the config."""
        args = ("--config", str(config_path), "--listen", "127.0.0.1:0", *extra)
        return cls(*args, cwd=config_path.parent, env=env, name=name)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RingdProcess:
        """Start and wait for the ready signal; a failed start raises AssertionError with stderr."""
        with self.stdout_path.open("ab") as out:
            try:
                self.process, self.ready = start_serve(
                    self.args, timeout_s=timeout_s, log=self.log_path, stdout=out, cwd=self.cwd, env=self.env
                )
            except ServeFailed as exc:
                raise AssertionError(str(exc)) from None
        return self

    @property
    def address(self) -> str:
        assert self.ready is not None, "not started"
        return self.ready.address

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def log(self) -> str:
        """What the process wrote to stderr (its log) so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def send_signal(self, signum: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit by itself; its exit status."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the drain; SIGKILL if it does not exit. Returns the exit status."""
        if self.process is None:
            return 0
        return stop_process(self.process, timeout_s)


StartRingd = Callable[..., RingdProcess]


@pytest.fixture
def ringd_process(tmp_path: Path) -> Iterator[StartRingd]:
    """``ringd_process(*args, cwd=tmp_path, env=None, name="ringd")``: a started RingdProcess.

    Every process still running at teardown is stopped (SIGTERM, then SIGKILL).
    """
    started: list[RingdProcess] = []

    def start(
        *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, name: str = "ringd"
    ) -> RingdProcess:
        process = RingdProcess(*args, cwd=cwd or tmp_path, env=env, name=name)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def health_check(target: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    """The overall health status name (SERVING, NOT_SERVING), or the gRPC code name if refused."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as refused:
            return refused.code().name  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

"""A throwaway ``redis-server`` on a free loopback port, for the Redis store tests.

Without ``redis-server`` a test that asks for one is skipped (install the Debian
package ``redis-server``), except under ``CI=true``, where a missing server fails the
run instead of hiding tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_PACKAGE_HINT = (
    "redis-server is not installed: apt-get install redis-server (Debian package redis-server)"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_answering(port: int) -> int | None:
    """The process id of the Redis answering on ``port`` (``INFO server``), or None.

    A free port picked here can be taken by another program (other test runs share the
    machine) before redis-server binds it: a server that answers is ours only if the pid
    is.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            with sock.makefile("rb") as reply:
                for line in reply:
                    if line.startswith(b"process_id:"):
                        return int(line.split(b":", 1)[1])
                    if line.startswith(b"# Clients"):
                        break
    except (OSError, ValueError):
        return None
    return None


class _PortTaken(RuntimeError):
    pass


class RedisServer:
    """A throwaway ``redis-server``: no persistence, loopback only, its own folder.

    :meth:`stop` and :meth:`start` again reuse the same port, as a restarted Redis
    behind a fixed address would.
    """

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers (as itself: its pid).

        The first start moves to another free port if the one picked was taken meanwhile;
        a restart keeps its port, as a restarted Redis behind a fixed address would.
        """
        for _ in range(5):
            try:
                self._start_once(timeout_s)
            except _PortTaken:
                if self.started_once:
                    raise
                self.port = _free_port()
                continue
            self.started_once = True
            return
        raise RuntimeError("redis-server found no free port in 5 tries")

    def _start_once(self, timeout_s: float) -> None:
        log = self.folder / "redis.log"
        log.unlink(missing_ok=True)
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--hz", "100",
            "--dir", str(self.folder),
            "--logfile", str(log),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while _pid_answering(self.port) != self.process.pid:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                text = log.read_text() if log.exists() else ""
                if "Address already in use" in text + err.decode():
                    raise _PortTaken(self.port)
                raise RuntimeError(f"redis-server exited ({self.process.returncode}): {err.decode()}{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout_s} s")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until it is gone."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()

    def flush(self) -> None:
        """Empty every database (FLUSHALL), so a shared server starts each test clean."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL on port {self.port} answered {reply!r}")


def _redis_binary() -> str:
    """Path of redis-server; skips the test without it, or fails it under CI=true."""
    binary = shutil.which("redis-server")
    if binary is None and Path("/usr/bin/redis-server").exists():
        binary = "/usr/bin/redis-server"
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REDIS_PACKAGE_HINT}; CI must run the Redis tests")
        pytest.skip(REDIS_PACKAGE_HINT)
    return binary


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` of this test's own, free to stop and restart."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(_redis_binary(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the whole session (starting one per test adds up)."""
    binary = _redis_binary()
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    """URL of the shared ``redis-server``, emptied for this test. Do not stop that server."""
    shared_redis.flush()
    return shared_redis.url

"""``ringd serve``'s ready signal, and starting a ``ringd serve`` process that waits for it.

``ringd serve --ready-fd N`` writes ONE line of JSON to file descriptor N once every
address is bound and the signal handlers are in place, then closes N::

    {"ready": true, "pid": 4242, "version": "0.1.0", "config_version": "v1", "generation": 1,
     "listen": ["127.0.0.1:50051"], "admin_listen": [], "workers": [4242]}

``listen`` and ``admin_listen`` are the bound addresses (port 0 resolved). Under
``--workers N`` the supervisor writes the line once every worker is ready; ``pid`` is
the supervisor's and ``workers`` its workers'. A process that fails to start closes N
without writing (it exits): the reader sees end-of-file, never a partial line.

The supervisor (:mod:`ringd.server.workers`), the benchmarks, the soak script and the
tests all start ``ringd serve`` through :func:`start_serve` or :class:`ReadyPipe`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

READY_LINE_MAX = 64 * 1024


class ServeFailed(RuntimeError):
    """A ``ringd serve`` process exited, or did not become ready in time, during start-up."""


@dataclass(frozen=True)
class Ready:
    """The ready signal of one ``ringd serve`` process (see the module docstring)."""

    pid: int
    listen: tuple[str, ...]
    admin_listen: tuple[str, ...] = ()
    config_version: str = ""
    generation: int = 0
    version: str = ""
    workers: tuple[int, ...] = field(default_factory=tuple)

    @property
    def address(self) -> str:
        """The first listen address (what a single-address test or script dials)."""
        return self.listen[0]

    def to_json(self) -> str:
        return json.dumps(
            {
                "ready": True,
                "pid": self.pid,
                "version": self.version,
                "config_version": self.config_version,
                "generation": self.generation,
                "listen": list(self.listen),
                "admin_listen": list(self.admin_listen),
                "workers": list(self.workers),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Ready:
        """Parse a ready line; a malformed one raises :class:`ServeFailed` quoting it."""
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or data.get("ready") is not True:
                raise ValueError("not a ready object")
            return cls(
                pid=int(data["pid"]),
                listen=tuple(str(a) for a in data["listen"]),
                admin_listen=tuple(str(a) for a in data.get("admin_listen", ())),
                config_version=str(data.get("config_version", "")),
                generation=int(data.get("generation", 0)),
                version=str(data.get("version", "")),
                workers=tuple(int(p) for p in data.get("workers", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ServeFailed(f"malformed ready signal {line[:200]!r}: {exc}") from None


def check_ready_fd(fd: int) -> str | None:
    """The problem with ``--ready-fd fd`` (not open, not writable), or None."""
    if fd < 0:
        return f"--ready-fd {fd}: not a file descriptor"
    try:
        os.fstat(fd)
    except OSError:
        return f"--ready-fd {fd}: not an open file descriptor (pass one the process inherits)"
    return None


def write_ready(fd: int, ready: Ready) -> None:
    """Write the ready line to ``fd`` and close it (stdout and stderr stay open)."""
    data = (ready.to_json() + "\n").encode()
    try:
        if fd in (1, 2):
            (sys.stdout if fd == 1 else sys.stderr).flush()
        os.write(fd, data)
    finally:
        if fd not in (0, 1, 2):
            os.close(fd)


class ReadyPipe:
    """A pipe whose write end a child gets as ``--ready-fd``; the parent reads the line.

    ``args`` goes on the child's command line and ``pass_fds`` to :class:`subprocess.Popen`;
    call :meth:`spawned` right after Popen so the parent's copy of the write end is
    closed (the child's exit is then end-of-file on the read end).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._buffer = b""
        self.line: str | None = None

    @property
    def args(self) -> list[str]:
        return ["--ready-fd", str(self._write)]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._write,)

    def fileno(self) -> int:
        return self._read

    def spawned(self) -> None:
        if self._write >= 0:
            os.close(self._write)
            self._write = -1

    def feed(self) -> bool:
        """Read what is there; True once the line is complete or the writer is gone."""
        chunk = os.read(self._read, 4096)
        if chunk:
            self._buffer += chunk
            if b"\n" not in self._buffer and len(self._buffer) < READY_LINE_MAX:
                return False
            self.line = self._buffer.split(b"\n", 1)[0].decode(errors="replace")
        return True

    def close(self) -> None:
        self.spawned()
        if self._read >= 0:
            os.close(self._read)
            self._read = -1


def wait_ready(
    children: Mapping[str, tuple[subprocess.Popen[Any], ReadyPipe]], timeout_s: float
) -> dict[str, Ready]:
    """Wait for every child's ready line; the first one to fail ends the wait.

    Raises:
        ServeFailed: a child exited before it was ready (its name and exit status in
            the message), or ``timeout_s`` passed first.
    """
    ready: dict[str, Ready] = {}
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        for name, (_, pipe) in children.items():
            selector.register(pipe, selectors.EVENT_READ, name)
        while len(ready) < len(children):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = ", ".join(sorted(set(children) - set(ready)))
                raise ServeFailed(f"{waiting} not ready within {timeout_s:g} s")
            for key, _ in selector.select(remaining):
                name = key.data
                process, pipe = children[name]
                if not pipe.feed():
                    continue
                selector.unregister(pipe)
                if pipe.line is None:
                    code = _exit_status(process)
                    raise ServeFailed(f"{name} (pid {process.pid}) exited during start-up ({code})")
                ready[name] = Ready.from_json(pipe.line)
    return ready


def _exit_status(process: subprocess.Popen[Any]) -> str:
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return "closed its ready fd but is still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def ringd_command() -> list[str]:
    """The ``ringd`` console script beside this Python, else on PATH, else ``python -m``."""
    beside = Path(sys.executable).with_name("ringd")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ringd")
    return [found] if found else [sys.executable, "-m", "ringd.server.cli"]


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM (drain and stop) and wait; SIGKILL when it outlives ``timeout_s``. Returns the status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_serve(
    args: Sequence[str],
    *,
    timeout_s: float = 60.0,
    log: Path | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    start_new_session: bool = False,
    program: Sequence[str] | None = None,
) -> tuple[subprocess.Popen[bytes], Ready]:
    """Start ``ringd serve ARGS --ready-fd N`` and return the process once it is ready.

    ``log`` receives the process's stderr (appended); on failure its last lines are
    in the :class:`ServeFailed` message and the process has been killed. ``program``
    is the ringd command to run (default: this interpreter's), e.g. an installed one.
    """
    pipe = ReadyPipe()
    command = [*(program or ringd_command()), "serve", *args, *pipe.args]
    stderr_file = log.open("ab") if log is not None else None
    try:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr_file,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            pass_fds=pipe.pass_fds,
            start_new_session=start_new_session,
        )
    finally:
        pipe.spawned()
        if stderr_file is not None:
            stderr_file.close()
    try:
        ready = wait_ready({"ringd serve": (process, pipe)}, timeout_s)["ringd serve"]
    except ServeFailed as exc:
        if process.poll() is None:
            process.kill()
            process.wait()
        tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
        raise ServeFailed(
            f"{' '.join(command)}: {exc}" + (f"\nits stderr:\n{tail}" if tail else "")
        ) from None
    finally:
        pipe.close()
    return process, ready

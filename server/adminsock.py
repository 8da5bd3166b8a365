"""Where the admin service listens when no admin token is configured, and how to find it.

Without ``server.admin_token`` (or ``RINGD_ADMIN_TOKEN``) and without an explicit
``server.admin_listen``, the admin service is served on one unix socket only, made
0600 in a 0700 folder owned by the server's user, so only that user (and root)
can reach it; the TCP listeners refuse admin calls and say where it is.

The path is predictable, so the CLI finds it from the address it would call:
``<runtime dir>/admin-<port>.sock`` for a server whose first TCP listen address
has that port (``admin-u<digest>.sock`` for a server on unix sockets only), and
``admin-<port>.<worker>.sock`` for each worker of ``ringd serve --workers``. The
runtime dir is ``$RINGD_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/ringd``, else
``/tmp/ringd-<uid>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

RUNTIME_DIR_ENV = "RINGD_RUNTIME_DIR"

_log = logging.getLogger("ringd.server")


class AdminSocketError(RuntimeError):
    """The admin socket's folder or path cannot be used safely."""


def runtime_dir() -> Path:
    """The folder of the default admin sockets (see the module docstring)."""
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "ringd"
    return Path(tempfile.gettempdir()) / f"ringd-{os.getuid()}"


def _key(address: str) -> str:
    """``50051`` for ``host:50051``; ``u<digest>`` for a unix socket path."""
    if address.startswith("unix"):
        path = address.split(":", 1)[1].removeprefix("//")
        return "u" + hashlib.sha256(path.encode()).hexdigest()[:12]
    return address.rsplit(":", 1)[1]


def main_key_address(addresses: list[str] | tuple[str, ...]) -> str:
    """The address the default admin socket is named after: the first TCP one, else the first."""
    return next((a for a in addresses if not a.startswith("unix")), addresses[0])


def default_admin_socket(main_address: str, worker: int | None = None) -> Path:
    """The default admin socket of the server (or worker) whose main address is ``main_address``."""
    suffix = f".{worker}" if worker is not None else ""
    return runtime_dir() / f"admin-{_key(main_address)}{suffix}.sock"


def prepare(path: Path) -> None:
    """Make ``path``'s folder 0700 and ours, and clear a stale socket at ``path``.

    Raises:
        AdminSocketError: the folder belongs to another user or is not a folder, or
            another process serves ``path``.
    """
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AdminSocketError(f"admin socket folder {folder} is not a folder (a symlink?); remove it")
    if info.st_uid != os.getuid():
        raise AdminSocketError(
            f"admin socket folder {folder} belongs to uid {info.st_uid}, not to this user ({os.getuid()}); "
            f"remove it or set {RUNTIME_DIR_ENV} to a folder of your own"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        _log.warning("admin socket folder %s was mode %o; made 0700", folder, stat.S_IMODE(info.st_mode))
        folder.chmod(0o700)
    if is_live(path):
        raise AdminSocketError(
            f"another process serves the admin socket {path} (a ringd on the same port?); stop it, "
            "or give this server server.admin_listen or an admin_token"
        )
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()


def is_live(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError:  # refused or gone: a stale socket file
        return False
    finally:
        probe.close()
    return True


def find_admin_sockets(target: str) -> list[Path]:
    """The live default admin sockets of the server at ``target``: one, or one per worker.

    Empty when none is live (the server has a token or an explicit ``admin_listen``,
    or does not run).
    """
    single = default_admin_socket(target)
    if is_live(single):
        return [single]
    stem = single.name.removesuffix(".sock")
    workers: list[tuple[int, Path]] = []
    for candidate in single.parent.glob(f"{stem}.*.sock"):
        index = candidate.name.removesuffix(".sock").rsplit(".", 1)[1]
        if index.isdigit() and is_live(candidate):
            workers.append((int(index), candidate))
    return [path for _, path in sorted(workers)]

"""SQLite faults for the store tests: another process's writer holding the lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def write_lock_held(path: Path) -> Iterator[threading.Event]:
    """Another connection holds the write lock (BEGIN IMMEDIATE) until the block ends
    or the yielded event is set."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(30)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10), "the holder never took the lock"
        yield release
    finally:
        release.set()
        holder.join()

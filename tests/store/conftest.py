"""The store contract runs on both backends: ``store`` (from tests/support) once per backend.

Without ``redis-server`` the Redis half is skipped (see :mod:`support.redis`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ringd.server.store import SqliteStore


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Every test of this folder that opens a store runs once per backend."""
    return str(request.param)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A SQLite store on a real file in the test's folder."""
    opened = await SqliteStore.open(tmp_path / "ringd.db")
    yield opened
    await opened.close()

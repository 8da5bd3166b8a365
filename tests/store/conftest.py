"""The store contract runs on both backends: ``store`` (from tests/support) once per backend.

Without ``redis-server`` the Redis half is skipped (see :mod:`support.redis`).
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Every test of this folder that opens a store runs once per backend."""
    return str(request.param)

"""The suite's fixtures live in ``tests/support`` (one of each), registered here."""

from __future__ import annotations

pytest_plugins = ["support.fixtures", "support.redis", "support.process", "ringd.testing.pytest_plugin"]

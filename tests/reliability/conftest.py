"""Fixtures of the reliability suite, reusing the gRPC suite's helpers and fixtures.

``serve``, ``workspace`` and the environment clean-up come from ``tests/grpc/conftest.py``
and ``rpc_helpers`` (imported, not copied); ``tests.support.process`` runs ``ringd serve``
as a child process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_GRPC_TESTS = Path(__file__).resolve().parents[1] / "grpc"
if str(_GRPC_TESTS) not in sys.path:
    sys.path.insert(0, str(_GRPC_TESTS))


def _grpc_conftest():  # the gRPC suite's conftest, under a name of its own
    spec = importlib.util.spec_from_file_location("ringd_grpc_test_fixtures", _GRPC_TESTS / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _grpc_conftest()
_clean_env = _fixtures._clean_env
workspace = _fixtures.workspace
serve = _fixtures.serve

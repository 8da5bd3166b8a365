"""Fixtures of the engine's unit tests: workspaces holding the test plugins of support.engine."""

from __future__ import annotations

import pytest
from support.engine import SCRIPTED, SLEEPER
from support.workspace import Workspace


@pytest.fixture
def with_scripted(workspace: Workspace) -> Workspace:
    workspace.plugin("scripted.py", SCRIPTED)
    return workspace


@pytest.fixture
def with_sleeper(workspace: Workspace) -> Workspace:
    workspace.plugin("sleeper.py", SLEEPER)
    workspace.plugin("scripted.py", SCRIPTED)
    return workspace

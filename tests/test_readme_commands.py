"""The README's grpcurl and ringd commands work as written, against the default pipeline."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ringd.server.app import build_server
from ringd.server.config import default_config

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent


def readme_block(after: str) -> str:
    """The first ```sh block after the line containing ``after``."""
    text = README.read_text()
    start = text.index(after)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


def commands(block: str, program: str) -> list[str]:
    """The commands of a block that start with ``program`` (lines joined, comments dropped)."""
    joined = re.sub(r"\n(?=\s*[^\s#a-z])", " ", block)  # continuation lines of a quoted argument
    return [line for line in joined.splitlines() if line.startswith(program + " ")]


def run(command: str, address: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = command.replace("127.0.0.1:50051", address).split(" | ")[0]  # no jq needed
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RINGD_TARGET": address}
    return subprocess.run(
        shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def run_all(found: list[str], address: str, tmp_path: Path) -> list[str]:
    """Run each command; each must succeed; return their outputs in order."""
    outputs = []
    for command in found:
        result = await asyncio.to_thread(run, command, address, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        outputs.append(result.stdout)
    return outputs


@pytest.fixture
async def default_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    server = await build_server(default_config(), listen=["127.0.0.1:0"])
    yield server.addresses[0]
    await server.stop(2)


async def test_the_grpcurl_commands(default_server: str, tmp_path: Path) -> None:
    found = commands(readme_block("With the server from `make run`"), "grpcurl")
    assert len(found) == 5
    listed, described, ring, health, plugins = await run_all(found, default_server, tmp_path)
    assert "ringd.v1.PluginEngineService" in listed
    assert "rpc ExecuteRing" in described
    assert '"action": "PLUGIN_ACTION_MODIFY"' in ring
    assert "[EMAIL_1]" in ring
    assert '"status": "SERVING"' in health
    assert '"name": "pii_redactor"' in plugins


async def test_the_ringd_commands(default_server: str, tmp_path: Path) -> None:
    found = commands(readme_block("The same from the `ringd` command"), "ringd")
    assert len(found) == 5
    (tmp_path / "my-ringd.yaml").write_text("plugins: []\n")  # for `ringd check-config`
    redacted, trial, plugins, reloaded, checked = await run_all(found, default_server, tmp_path)
    assert "[EMAIL_1]" in redacted
    assert '"tenant": "trial"' in trial
    assert '"name": "api_key_auth"' in plugins
    assert '"generation": 2' in reloaded
    assert "my-ringd.yaml: ok" in checked

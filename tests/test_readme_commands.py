"""The README's grpcurl and ringd commands work as written, against the default pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ringd.client import AsyncClient
from ringd.server.app import build_server
from ringd.server.config import default_config, load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def readme_block(after: str) -> str:
    """The first ```sh block after the line containing ``after``."""
    text = README.read_text()
    start = text.index(after)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match, f"no sh block after {after!r}"
    return match.group(1)


def commands(block: str, *programs: str) -> list[str]:
    """The commands of a block that start with one of ``programs`` (lines joined, comments dropped)."""
    joined = re.sub(r"\n(?=\s*[^\s#a-z])", " ", block)  # continuation lines of a quoted argument
    return [line for line in joined.splitlines() if line.startswith(tuple(p + " " for p in programs))]


def run(command: str, address: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a README command in ``tmp_path`` as if there were the repository root.

    Paths into the repository (``server/...``) are read from the checkout; files the
    commands write land in ``tmp_path``.
    """
    command = command.replace("127.0.0.1:50051", address).split(" | ")[0]  # no jq needed
    command = command.split("  #")[0]  # a trailing comment
    argv = ["bash", "-c", command] if "$(" in command else shlex.split(command)
    if argv[0] == "cp":
        argv[1] = str(ROOT / argv[1])
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RINGD_TARGET": address}
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
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
    assert len(found) == 7
    outputs = await run_all(found, default_server, tmp_path)
    listed, described, method, block_info, ring, health, plugins = outputs
    assert "ringd.v1.PluginEngineService" in listed
    assert "rpc ExecuteRing" in described
    assert "// Runs one ring over a request's context" in method
    assert "// The HTTP status code, 400 to 599." in block_info
    assert "map<string, string> headers = 4;" in block_info
    assert '"action": "PLUGIN_ACTION_MODIFY"' in ring
    assert "[EMAIL_1]" in ring
    assert '"status": "SERVING"' in health
    assert '"name": "pii_redactor"' in plugins


async def test_the_ringd_commands(default_server: str, tmp_path: Path) -> None:
    found = commands(readme_block("The same from the `ringd` command"), "ringd", "cp")
    assert [command.split()[:2] for command in found] == [
        ["ringd", "ring"],
        ["ringd", "ring"],
        ["ringd", "plugins"],
        ["ringd", "reload"],
        ["cp", "server/default_config.yaml"],
        ["ringd", "check-config"],
    ]
    started = time.time()  # the demo key's first request is among these
    redacted, trial, plugins, reloaded, _, checked = await run_all(found, default_server, tmp_path)
    assert "[EMAIL_1]" in redacted
    assert '"tenant": "trial"' in trial
    assert '"name": "api_key_auth"' in plugins
    assert '"generation": 2' in reloaded
    assert "my-ringd.yaml: ok, 11 plugins" in checked

    # The demo key's fourth request within the minute: a 429 with Retry-After, as the README says.
    ingress = next(command for command in found if "ringd-demo-key" in command)
    answers = [json.loads(answer) for answer in await run_all([ingress] * 3, default_server, tmp_path)]
    if answers[-1]["action"] != "block":
        # The limit counts per minute of Unix time, and these requests crossed into a new
        # one (a slow machine). Four more, early in that minute, all fall in it.
        assert started // 60 != time.time() // 60, f"not refused within one minute: {answers[-1]}"
        answers = [json.loads(answer) for answer in await run_all([ingress] * 4, default_server, tmp_path)]
    refused = answers[-1]
    assert (refused["action"], refused["status_code"]) == ("block", 429)
    assert refused["headers"] == {"Retry-After": str(refused["metadata"]["retry_after_s"])}


async def test_adding_your_own_key_as_the_readme_says(default_server: str, tmp_path: Path) -> None:
    (digest_command,) = commands(readme_block("To add your own key"), "printf")
    hashed = subprocess.run(digest_command, shell=True, capture_output=True, text=True, check=True)
    digest = hashed.stdout.split()[0]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    key = re.search(r"printf %s '([^']+)'", digest_command)
    assert key
    # The README's YAML lines go under the api_key_auth entry of a copy of the default config.
    yaml_block = re.search(r"```yaml\n# my-ringd.yaml.*?\n(.*?)```", README.read_text(), re.S)
    assert yaml_block
    own_line = next(line for line in yaml_block.group(1).splitlines() if "my-team" in line)
    config = (ROOT / "server" / "default_config.yaml").read_text()
    demo_line = next(line for line in config.splitlines() if "id: demo-key" in line)
    assert demo_line.strip() in yaml_block.group(1)
    indent = demo_line[: len(demo_line) - len(demo_line.lstrip())]
    own = indent + own_line.strip().replace("<the digest from sha256sum>", digest)
    (tmp_path / "my-ringd.yaml").write_text(config.replace(demo_line, demo_line + "\n" + own))

    server = await build_server(load_config(tmp_path / "my-ringd.yaml"), listen=["127.0.0.1:0"])
    try:
        async with AsyncClient(server.addresses[0], timeout=10) as client:
            own_key = await client.execute_ring(
                "ingress", {}, headers={"authorization": f"Bearer {key.group(1)}"}
            )
            other = await client.execute_ring("ingress", {}, headers={"authorization": "Bearer sk-unknown"})
    finally:
        await server.stop(2)

    assert own_key.action == "passthrough"
    assert own_key.metadata["tenant"] == "my-team"
    assert (other.action, other.status_code) == ("block", 401)


def readme_python(first_line: str) -> str:
    """The ```python block of the README whose first line is ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no python block starting with {first_line!r}")


def test_the_plugin_and_its_test_from_the_readme_pass(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "shout.py").write_text(readme_python("# plugins/shout.py"))
    (plugins / "test_shout.py").write_text(readme_python("# plugins/test_shout.py"))

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "plugins/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_every_ringd_yaml_sample_in_the_readme_is_a_valid_config(tmp_path: Path) -> None:
    """Each ```yaml block that shows a whole ringd.yaml passes `ringd check-config` as written."""
    blocks = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
        if block.lstrip().startswith("# ringd.yaml") or block.lstrip().startswith("version:")
    ]
    assert blocks, "the README shows no ringd.yaml"
    # The plugin files the samples name, as the README shows them (```python blocks that
    # start with their path, e.g. "# plugins/shout.py").
    for code in re.findall(r"```python\n(# (plugins/\S+\.py).*?)```", README.read_text(), re.S):
        target = tmp_path / code[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code[0])
    for index, block in enumerate(blocks):
        path = tmp_path / f"sample{index}.yaml"
        path.write_text(block)
        checked = subprocess.run(
            [str(BIN / "ringd"), "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        assert checked.returncode == 0, f"README sample {index}:\n{block}\n{checked.stdout}{checked.stderr}"

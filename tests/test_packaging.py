"""The Python distribution installs alone: `python -m build` makes an sdist and a wheel (the
wheel built from the sdist), and a fresh virtualenv with only that wheel (its dependencies
from PyPI) serves, answers a client call, imports the plugin SDK and the testing kit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ringd.server.launch import start_serve, stop_process

ROOT = Path(__file__).resolve().parents[1]

# Building and installing from PyPI takes a minute or more on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", home / "venv")
    (wheel,) = dist.glob("ringd-*.whl")
    run(home / "venv" / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)
    return home / "venv"


def test_build_gives_an_sdist_and_a_wheel_of_namespaced_packages(dist: Path) -> None:
    (sdist,) = dist.glob("ringd-*.tar.gz")
    (wheel,) = dist.glob("ringd-*.whl")
    assert sdist.stat().st_size > 0
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"ringd", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for packaged in (
        "ringd/sdk/py.typed",
        "ringd/server/default_config.yaml",
        "ringd/v1/descriptor_set.binpb",
        "ringd/testing/pytest_plugin.py",
        "ringd/client/__init__.py",
        "ringd/plugins/rate_limiter.py",
    ):
        assert packaged in names


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[str]:
    """The installed `ringd serve` (default pipeline) on an ephemeral port, in an empty folder."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RINGD_", "OTEL_"))}
    env["RINGD_RUNTIME_DIR"] = str(tmp_path / "run")  # its admin socket, in this test's folder
    process, ready = start_serve(
        ["--listen", "127.0.0.1:0"],
        program=[str(venv / "bin" / "ringd")],
        cwd=tmp_path,
        env=env,
        log=tmp_path / "ringd.stderr",
    )
    try:
        yield ready.address
    finally:
        stop_process(process, 30)


def test_the_installed_command_reports_its_version(venv: Path) -> None:
    assert run(venv / "bin" / "ringd", "--version").strip() == "ringd 0.1.0"


def test_the_installed_client_calls_the_installed_server(venv: Path, served: str, tmp_path: Path) -> None:
    script = f"""
import json
from ringd.client import Client

with Client({served!r}, timeout=10) as ringd:
    result = ringd.execute_ring(
        "pre_flight", {{"model": "m", "messages": [{{"role": "user", "content": "mail jane@example.com"}}]}}
    )
print(json.dumps({{"action": result.action, "content": result.body["messages"][0]["content"]}}))
"""
    answer = json.loads(run(venv / "bin" / "python", "-c", script, cwd=tmp_path))

    assert answer["action"] == "modify"
    assert "jane@example.com" not in answer["content"]
    assert "[EMAIL_1]" in answer["content"]


def test_the_installed_server_serves_documented_reflection(served: str) -> None:
    out = run(ROOT / ".venv" / "bin" / "grpcurl", "-plaintext", served, "describe", "ringd.v1.BlockInfo")
    assert "// The HTTP status code, 400 to 599." in out


def test_a_plugin_and_its_test_kit_import_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    script = """
import asyncio
from ringd.sdk import BasePlugin, PluginResponse
from ringd.testing import make_context, run_plugin


class Hello(BasePlugin):
    name = "hello"

    async def execute(self, ctx):
        return PluginResponse.block(418, "teapot", "hello " + ctx.body["name"])


print(asyncio.run(run_plugin(Hello(), make_context({"name": "wheel"}))).message)
"""
    assert run(venv / "bin" / "python", "-c", script, cwd=tmp_path).strip() == "hello wheel"

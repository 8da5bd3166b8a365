"""tests/gateways fixtures: the example gateways (Go and Node) as real processes, with a real ``ringd serve``.

Each gateway is started as its user would start it: the Go one as a binary built
with ``go build``, the Node one as ``node examples/gateway.js`` (``npm ci`` first
when node_modules is stale); with no upstream URL each starts its own fake upstream,
which streams SSE. ringd serves the built-in default pipeline with two changes a
user makes by editing a copy of it: a key for the tests (the ``openai`` SDK always
sends one, and the demo key allows 3 requests a minute) and ``block_on_canary`` on
the response sanitizer (so a leak blocks mid-stream instead of being removed).
Without go or node the gateway's tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from support.process import RingdProcess

ROOT = Path(__file__).resolve().parents[2]
TEST_KEY = "gateway-test-key"
CANARY = "RINGD-CANARY-7f3a"
START_TIMEOUT_S = 120.0  # a bound for a loaded machine; a gateway starts in well under a second


def _missing(tool: str) -> None:
    message = f"the gateway tests need {tool}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing toolchain fails the build)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def go_gateway_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        _missing("go")
    binary = tmp_path_factory.mktemp("go-gateway") / "gateway"
    subprocess.run(
        ["go", "build", "-o", str(binary), "./examples/gateway"],
        cwd=ROOT / "clients" / "go",
        check=True,
        timeout=600,
    )
    return binary


@pytest.fixture(scope="session")
def node_gateway_script() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        _missing("node and npm")
    node = ROOT / "clients" / "node"
    hidden = node / "node_modules" / ".package-lock.json"
    if not hidden.exists() or any(
        (node / name).stat().st_mtime > hidden.stat().st_mtime
        for name in ("package.json", "package-lock.json")
    ):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node, check=True, timeout=600)
    return node / "examples" / "gateway.js"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path) -> Path:
    """The default pipeline with the test key and block_on_canary, its files in ``folder``."""
    config = yaml.safe_load((ROOT / "server" / "default_config.yaml").read_text())
    config["store"] = str(folder / "ringd.db")
    for entry in config["plugins"]:
        if entry["name"] == "api_key_auth":
            digest = hashlib.sha256(TEST_KEY.encode()).hexdigest()
            entry["config"]["keys"].append({"id": "gateway-test", "tenant": "demo", "sha256": digest})
        elif entry["name"] == "response_sanitizer":
            entry["config"]["block_on_canary"] = True
            assert entry["config"]["canary"] == CANARY
        elif entry["name"] == "audit_log":
            entry["config"]["path"] = str(folder / "audit.jsonl")
    path = folder / "ringd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Ringd:
    """``ringd serve`` on a fixed port, so it can be restarted where the gateway looks."""

    def __init__(self, folder: Path) -> None:
        self.config = write_config(folder)
        self.port = free_port()
        self.process: RingdProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = RingdProcess(
            "--config", str(self.config), "--listen", self.target, cwd=self.config.parent
        ).start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Gateway:
    """One example gateway process: ``url`` is its base URL (``.../v1`` for the SDK)."""

    def __init__(self, command: list[str], cwd: Path, folder: Path, env: dict[str, str]) -> None:
        self.log_path = folder / "gateway.out"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGD_", "UPSTREAM_", "PORT"))}
        full_env.update(env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        found = None
        while found is None:
            found = re.search(r"gateway listening on (http://\S+)", self.log())
            if found is None:
                assert self.process.poll() is None, f"the gateway exited:\n{self.log()}"
                assert time.monotonic() < deadline, f"the gateway did not listen:\n{self.log()}"
                time.sleep(0.05)
        self.url = found.group(1)
        upstream = re.search(r"fake upstream listening on (http://\S+)", self.log())
        assert upstream is not None, self.log()
        self.upstream_url = upstream.group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


StartGateway = Callable[[str, Ringd, bool], Gateway]


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(kind, ringd, fail_open)``: a running Go or Node gateway."""
    started: list[Gateway] = []

    def start(kind: str, ringd: Ringd, fail_open: bool) -> Gateway:
        env = {"RINGD_TARGET": ringd.target, "PORT": "0", "RINGD_FAIL_OPEN": "1" if fail_open else ""}
        folder = tmp_path / f"{kind}-{len(started)}"
        folder.mkdir()
        if kind == "go":
            binary = request.getfixturevalue("go_gateway_binary")
            gateway = Gateway([str(binary)], folder, folder, env)
        else:
            script = request.getfixturevalue("node_gateway_script")
            gateway = Gateway(["node", str(script)], script.parent.parent, folder, env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def ringd(tmp_path: Path) -> Iterator[Ringd]:
    server = Ringd(tmp_path)
    server.start()
    yield server
    server.stop()

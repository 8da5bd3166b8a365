"""`ringd serve` as an operator runs it: a taken port, and --workers sharing one port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ringd.client import Client

RINGD = str(Path(sys.executable).with_name("ringd"))

CONFIG = """
version: v1
store: ringd.db
plugins:
  - name: whoami
    hook: pre_flight
    entrypoint: whoami.py:WhoAmI
"""

PLUGIN = """
import os
from ringd.sdk import PluginHook, BasePlugin, PluginResponse

class WhoAmI(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    async def execute(self, ctx):
        ctx.metadata["pid"] = os.getpid()
        ctx.metadata["label"] = self.config.get("label", "first")
        return PluginResponse.passthrough()
"""


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([RINGD, "serve", *args], cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise AssertionError(f"ringd {' '.join(args)} did not start")


def serve_once(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ringd serve ARGS` expected to exit by itself (a refused start)."""
    return subprocess.run(
        [RINGD, "serve", *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=30
    )


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "ringd.yaml").write_text(CONFIG)
    (tmp_path / "whoami.py").write_text(PLUGIN)
    return tmp_path


def test_a_second_server_on_a_taken_port_fails_clearly(workdir: Path) -> None:
    first, address = start(["--config", "ringd.yaml", "--listen", "127.0.0.1:0"], workdir)
    try:
        second = serve_once(["--config", "ringd.yaml", "--listen", address], workdir)
        assert second.returncode == 1
        assert f"cannot serve: Failed to bind to address {address}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert stop(first) == 0


def test_workers_share_one_port_and_reload_together(workdir: Path) -> None:
    args = ["--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", "2"]
    supervisor, address = start(args, workdir)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            with Client(address) as client:  # a new connection each time: SO_REUSEPORT spreads them
                pids.add(client.execute_ring("pre_flight", {}).metadata["pid"])
        assert len(pids) == 2, "both workers answer on the one port"
        assert supervisor.pid not in pids

        (workdir / "ringd.yaml").write_text(CONFIG.replace("v1", "v2") + "    config: {label: second}\n")
        with Client(address) as client:
            assert client.reload()["config_version"] == "v2"
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 20
        while (len(seen) < 2 or set(seen.values()) != {"v2"}) and time.monotonic() < deadline:
            with Client(address) as client:
                outcome = client.execute_ring("pre_flight", {})
                seen[outcome.metadata["pid"]] = outcome.config_version
                assert outcome.metadata["label"] == ("second" if outcome.config_version == "v2" else "first")
            time.sleep(0.05)
        assert seen == dict.fromkeys(pids, "v2"), "the admin reload reached the other worker too"
    finally:
        assert stop(supervisor) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_refuse_a_unix_socket(workdir: Path) -> None:
    result = serve_once(
        ["--config", "ringd.yaml", "--listen", f"unix:{workdir}/r.sock", "--workers", "2"], workdir
    )
    assert result.returncode == 2
    assert "a unix socket cannot be shared" in result.stderr

"""`ringd serve` as an operator runs it: a taken port, and --workers sharing one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ringd.client import Client
from ringd.server.metrics import MergedEndpoint

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


def start(args: list[str], cwd: Path, stderr: IO[bytes] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [RINGD, "serve", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
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


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_workers_refuse_a_port_another_server_already_serves(workdir: Path, first_workers: str) -> None:
    first, address = start(
        ["--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", first_workers], workdir
    )
    try:
        second = serve_once(["--config", "ringd.yaml", "--listen", address, "--workers", "2"], workdir)
        assert second.returncode == 1
        assert f"ringd: cannot serve {address}: Address already in use" in second.stderr
        assert "Traceback" not in second.stderr
        with Client(address) as client:  # the first server is untouched
            assert client.execute_ring("pre_flight", {}).config_version == "v1"
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

        # No admin token: each worker serves admin on its own unix socket; the CLI finds them.
        sockets = sorted(
            Path(os.environ["RINGD_RUNTIME_DIR"]).glob(f"admin-{address.rsplit(':', 1)[1]}.*.sock")
        )
        assert [path.name.split(".")[-2] for path in sockets] == ["0", "1"]
        assert all(path.stat().st_mode & 0o777 == 0o600 for path in sockets)
        (workdir / "ringd.yaml").write_text(CONFIG.replace("v1", "v2") + "    config: {label: second}\n")
        reloaded = subprocess.run(
            [RINGD, "reload", "--target", address], capture_output=True, text=True, timeout=30, check=False
        )
        assert reloaded.returncode == 0, reloaded.stderr
        assert json.loads(reloaded.stdout)["config_version"] == "v2"
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 20
        while (len(seen) < 2 or set(seen.values()) != {"v2"}) and time.monotonic() < deadline:
            with Client(address) as client:
                outcome = client.execute_ring("pre_flight", {})
                seen[outcome.metadata["pid"]] = outcome.config_version
                assert outcome.metadata["label"] == ("second" if outcome.config_version == "v2" else "first")
            time.sleep(0.05)
        assert seen == dict.fromkeys(pids, "v2"), "the admin reload reached the other worker too"

        # Disabling through the CLI reaches every worker, not just one.
        disabled = subprocess.run(
            [RINGD, "plugins", "disable", "whoami", "--target", address],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert disabled.returncode == 0, disabled.stderr
        for path in sockets:
            with Client(f"unix:{path}") as client:
                (listed,) = client.list_plugins()
                assert (listed["name"], listed["status"]) == ("whoami", "disabled"), path
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


LOGGING_PLUGIN = """
import logging
import os
from ringd.sdk import BasePlugin, PluginResponse

_log = logging.getLogger("plugin.whoami")

class WhoAmI(BasePlugin):
    async def execute(self, ctx):
        ctx.metadata["pid"] = os.getpid()
        _log.warning("handling %s", ctx.request_id)
        return PluginResponse.passthrough()
"""


def free_port_pair() -> int:
    """A port P with P + 1 free too (the metrics ports of two workers)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def metric_samples(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_workers_serve_metrics_on_consecutive_ports_and_log_json_lines(workdir: Path) -> None:
    (workdir / "whoami.py").write_text(LOGGING_PLUGIN)
    port = free_port_pair()
    args = ["--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", "2"]
    args += ["--log-format", "json", "--metrics-listen", f"127.0.0.1:{port}"]
    with (workdir / "stderr.log").open("wb") as log:
        supervisor, address = start(args, workdir, stderr=log)
    rings = 0
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            with Client(address) as client:  # a new connection each time: SO_REUSEPORT spreads them
                rings += 1
                pids.add(client.execute_ring("pre_flight", {}, request_id=f"call-{rings}").metadata["pid"])
        assert len(pids) == 2

        # One port per worker (port + worker index), every sample labelled with its worker.
        calls = {}
        for index in (0, 1):
            found = metric_samples(f"127.0.0.1:{port + index}")
            key = frozenset({"worker": str(index), "plugin": "whoami", "ring": "pre_flight"}.items())
            calls[index] = found[("ringd_plugin_calls_total", key)]
            assert calls[index] >= 1, "each worker served some of the rings"
        assert sum(calls.values()) == rings

        # The supervisor's merged view (ringd.server.metrics.MergedEndpoint): one scrape,
        # every worker, each family once.
        merged = MergedEndpoint("127.0.0.1:0", [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"])
        try:
            with urllib.request.urlopen(f"http://{merged.address}/metrics", timeout=10) as reply:
                text = reply.read().decode()
        finally:
            merged.close()
        assert text.count("# TYPE ringd_plugin_calls_total counter") == 1
        found = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        for index in (0, 1):
            key = frozenset({"worker": str(index), "plugin": "whoami", "ring": "pre_flight"}.items())
            assert found[("ringd_plugin_calls_total", key)] == calls[index]
            up = frozenset({"worker_address": f"127.0.0.1:{port + index}"}.items())
            assert found[("ringd_worker_up", up)] == 1
    finally:
        assert stop(supervisor) == 0

    lines = [json.loads(line) for line in (workdir / "stderr.log").read_text().splitlines() if line.strip()]
    handled = [line for line in lines if line["logger"] == "plugin.whoami"]
    assert len(handled) == rings
    for line in handled:
        assert line["message"] == f"handling {line['request_id']}"
        assert (line["ring"], line["plugin"]) == ("pre_flight", "whoami")

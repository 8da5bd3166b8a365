"""`ringd serve` as an operator runs it: a taken port, and --workers sharing one port."""

from __future__ import annotations

import contextlib
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


def free_ports(count: int) -> int:
    """A port P with P + 1 ... P + count - 1 free too (the supervisor's and the workers' metrics)."""
    for _ in range(50):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                for offset in range(1, count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port
    raise AssertionError(f"no {count} consecutive free ports")


def metric_samples(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_workers_serve_one_merged_scrape_and_log_json_lines(workdir: Path) -> None:
    (workdir / "whoami.py").write_text(LOGGING_PLUGIN)
    port = free_ports(3)
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

        # Each worker serves its own page on port + 1 + worker index, its samples labelled.
        calls = {}
        for index in (0, 1):
            found = metric_samples(f"127.0.0.1:{port + 1 + index}")
            key = frozenset({"worker": str(index), "plugin": "whoami", "ring": "pre_flight"}.items())
            calls[index] = found[("ringd_plugin_calls_total", key)]
            assert calls[index] >= 1, "each worker served some of the rings"
        assert sum(calls.values()) == rings

        # The supervisor serves the configured port: one scrape, every worker, each family once.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert text.count("# TYPE ringd_plugin_calls_total counter") == 1
        assert text.count("# TYPE ringd_ring_latency_seconds histogram") == 1
        found = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        ring_counts = 0.0
        for index in (0, 1):
            key = frozenset({"worker": str(index), "plugin": "whoami", "ring": "pre_flight"}.items())
            assert found[("ringd_plugin_calls_total", key)] == calls[index]
            ring = frozenset({"worker": str(index), "ring": "pre_flight"}.items())
            ring_counts += found[("ringd_ring_latency_seconds_count", ring)]
            up = frozenset({"worker_address": f"127.0.0.1:{port + 1 + index}"}.items())
            assert found[("ringd_worker_up", up)] == 1
        assert ring_counts == rings
    finally:
        assert stop(supervisor) == 0
    with pytest.raises(OSError):  # the supervisor closed the merged endpoint on its way out
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

    lines = [json.loads(line) for line in (workdir / "stderr.log").read_text().splitlines() if line.strip()]
    handled = [line for line in lines if line["logger"] == "plugin.whoami"]
    assert len(handled) == rings
    for line in handled:
        assert line["message"] == f"handling {line['request_id']}"
        assert (line["ring"], line["plugin"]) == ("pre_flight", "whoami")

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

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ringd.client import Client
from support.process import RingdProcess, StartRingd

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
import json
import os
from ringd.sdk import PluginHook, BasePlugin, PluginResponse

class WhoAmI(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    async def execute(self, ctx):
        ctx.metadata["pid"] = os.getpid()
        ctx.metadata["label"] = self.config.get("label", "first")
        return PluginResponse.passthrough()
"""


def serve_once(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ringd serve ARGS` expected to exit by itself (a refused start)."""
    return subprocess.run(
        [RINGD, "serve", *args], cwd=cwd, check=False, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "ringd.yaml").write_text(CONFIG)
    (tmp_path / "whoami.py").write_text(PLUGIN)
    return tmp_path


def test_a_second_server_on_a_taken_port_fails_clearly(workdir: Path, ringd_process: StartRingd) -> None:
    first = ringd_process("--config", "ringd.yaml", "--listen", "127.0.0.1:0", cwd=workdir)
    address = first.address
    second = serve_once(["--config", "ringd.yaml", "--listen", address], workdir)
    assert second.returncode == 1
    assert f"cannot serve: Failed to bind to address {address}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.stop() == 0


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_workers_refuse_a_port_another_server_already_serves(workdir: Path, first_workers: str) -> None:
    first = RingdProcess(
        "--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", first_workers, cwd=workdir
    ).start()
    address = first.address
    try:
        second = serve_once(["--config", "ringd.yaml", "--listen", address, "--workers", "2"], workdir)
        assert second.returncode == 1
        assert f"ringd: cannot serve {address}: Address already in use" in second.stderr
        assert "Traceback" not in second.stderr
        with Client(address) as client:  # the first server is untouched
            assert client.execute_ring("pre_flight", {}).config_version == "v1"
    finally:
        assert first.stop() == 0, first.log()


def test_workers_share_one_port_and_reload_together(workdir: Path, ringd_process: StartRingd) -> None:
    supervisor = ringd_process(
        "--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", "2", cwd=workdir
    )
    address = supervisor.address
    assert supervisor.ready is not None
    assert len(supervisor.ready.workers) == 2
    assert supervisor.pid not in supervisor.ready.workers
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            with Client(address) as client:  # a new connection each time: SO_REUSEPORT spreads them
                pids.add(client.execute_ring("pre_flight", {}).metadata["pid"])
        assert pids == set(supervisor.ready.workers), "both workers answer on the one port"

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
        assert supervisor.stop() == 0, supervisor.log()
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
from ringd.sdk import BasePlugin, PluginHook, PluginResponse

_log = logging.getLogger("plugin.whoami")

class WhoAmI(BasePlugin):
    hook = PluginHook.PRE_FLIGHT

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
    supervisor = RingdProcess(*args, cwd=workdir).start()
    address = supervisor.address
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
        assert supervisor.stop() == 0, supervisor.log()
    with pytest.raises(OSError):  # the supervisor closed the merged endpoint on its way out
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

    lines = [json.loads(line) for line in supervisor.log().splitlines() if line.strip()]
    handled = [line for line in lines if line["logger"] == "plugin.whoami"]
    assert len(handled) == rings
    for line in handled:
        assert line["message"] == f"handling {line['request_id']}"
        assert (line["ring"], line["plugin"]) == ("pre_flight", "whoami")


def test_the_ready_signal_is_one_json_line_with_the_bound_addresses(workdir: Path) -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [
            *(RINGD, "serve", "--config", "ringd.yaml", "--listen", "127.0.0.1:0"),
            *("--admin-listen", f"unix:{workdir}/admin.sock", "--ready-fd", str(write_end)),
        ],
        cwd=workdir,
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as ready_pipe:
            signal_bytes = ready_pipe.read()  # the whole of it: ringd closes the fd after the line
        ready = json.loads(signal_bytes)
        assert signal_bytes.endswith(b"\n")
        assert signal_bytes.count(b"\n") == 1
        assert ready["ready"] is True
        assert ready["pid"] == proc.pid
        assert ready["workers"] == [proc.pid]
        assert (ready["config_version"], ready["generation"]) == ("v1", 1)
        assert ready["admin_listen"] == [f"unix:{workdir}/admin.sock"]
        (address,) = ready["listen"]
        assert address.startswith("127.0.0.1:")
        assert not address.endswith(":0")
        with Client(address) as client:  # serving as soon as the line is written
            assert client.execute_ring("pre_flight", {}).metadata["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_ready_fd_that_is_not_open_is_refused(workdir: Path) -> None:
    result = serve_once(["--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--ready-fd", "97"], workdir)
    assert result.returncode == 2
    assert "--ready-fd 97: not an open file descriptor" in result.stderr


def test_a_worker_that_cannot_start_ends_the_supervisor_with_its_error(workdir: Path) -> None:
    # The admin address is taken by another program: every worker fails to bind it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [
            "--config",
            "ringd.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            admin,
            "--workers",
            "2",
        ]
        # subprocess.run waits for the end of stderr, which every worker holds open too:
        # a worker left running would show as a timeout here.
        result = serve_once(args, workdir)
    assert result.returncode == 1
    assert f"cannot serve: Failed to bind to address {admin}" in result.stderr  # the worker's own error
    assert "exited during start-up (exit status 1); stopping the other workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_on_a_store_that_is_not_a_database_exit_with_the_store_error(workdir: Path) -> None:
    (workdir / "ringd.db").write_bytes(b"this is not a SQLite file" * 100)
    result = serve_once(["--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", "2"], workdir)
    assert result.returncode == 1
    assert f"cannot open SQLite store '{workdir / 'ringd.db'}': file is not a database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_single_server_on_a_broken_store_exits_instead_of_hanging(workdir: Path) -> None:
    (workdir / "ringd.db").write_bytes(b"this is not a SQLite file" * 100)
    result = serve_once(["--config", "ringd.yaml", "--listen", "127.0.0.1:0"], workdir)
    assert result.returncode == 1
    assert "file is not a database" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_workers_start_on_a_fresh_store_every_time(tmp_path: Path, ringd_process: StartRingd) -> None:
    for attempt in range(6):
        folder = tmp_path / f"fresh-{attempt}"
        folder.mkdir()
        (folder / "ringd.yaml").write_text(CONFIG)
        (folder / "whoami.py").write_text(PLUGIN)
        supervisor = ringd_process(
            "--config", "ringd.yaml", "--listen", "127.0.0.1:0", "--workers", "2", cwd=folder
        )
        with Client(supervisor.address) as client:
            assert client.execute_ring("pre_flight", {}).metadata["pid"] in supervisor.ready.workers
        assert supervisor.stop() == 0, supervisor.log()
        assert "database is locked" not in supervisor.log()


def test_workers_below_one_are_refused(workdir: Path) -> None:
    result = serve_once(["--config", "ringd.yaml", "--workers", "0"], workdir)
    assert result.returncode == 2
    assert "--workers must be at least 1, got 0" in result.stderr

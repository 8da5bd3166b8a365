"""Admin closed by default (issue 15, item 4): with no admin token the admin service is
served only on an owner-only unix socket that the CLI finds; the TCP listeners refuse it;
the exposure warning parses addresses; plugin files stay inside the config's folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest
from ringd.server.app import local_only
from ringd.server.config import load_config
from ringd.server.exceptions import ConfigError
from support.rpc import BIN, ring_request, run
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
TOKEN = "admin-token-for-closed-tests"


def socket_path(address: str) -> Path:
    return Path(address.removeprefix("unix:"))


async def test_without_a_token_tcp_refuses_admin_and_names_the_owner_only_socket(serve):
    running = await serve([entry("guard")])
    (admin_address,) = running.server.admin_addresses
    path = socket_path(admin_address)

    # Any process that can reach the TCP port: refused, nothing changed, told where admin is.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.admin(running.address).SetPluginEnabled(
            admin_pb.SetPluginEnabledRequest(name="guard", enabled=False), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    message = refused.value.details() or ""
    assert f"unix:{path}" in message
    assert "server.admin_token" in message
    tcp_admin = running.admin(running.address)
    for refused_call in (
        tcp_admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5),
        tcp_admin.ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as also:
            await refused_call
        assert also.value.code() == grpc.StatusCode.PERMISSION_DENIED
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=5)
    assert answer.results[0].plugin == "guard"  # still enabled

    # The socket: 0600, in a 0700 folder of ours, named after the port.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.parent.stat().st_uid == os.getuid()
    assert path.parent == Path(os.environ["RINGD_RUNTIME_DIR"])
    assert path.name == f"admin-{running.address.rsplit(':', 1)[1]}.sock"
    listing = await running.admin(admin_address).ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert [p.name for p in listing.plugins] == ["guard"]
    # The unix listener of the engine is not an admin door either.
    with pytest.raises(grpc.aio.AioRpcError) as on_unix:
        await running.admin(running.unix_address).ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert on_unix.value.code() == grpc.StatusCode.PERMISSION_DENIED

    await running.server.stop(grace_s=1.0)
    assert not path.exists()  # no stale socket left behind


async def test_the_cli_finds_the_admin_socket_from_the_servers_address(serve, workspace):
    running = await serve([entry("guard")])
    ringd = BIN / "ringd"

    code, out, err = await run(ringd, "plugins", "disable", "guard", "--target", running.address)
    assert code == 0, err
    assert '"status": "disabled"' in out
    code, out, err = await run(ringd, "plugins", "list", "--target", running.address)
    assert code == 0, err
    assert '"status": "disabled"' in out
    workspace.write_config([entry("guard")], version="v2")
    code, out, err = await run(ringd, "reload", "--target", running.address)
    assert code == 0, err
    assert '"config_version": "v2"' in out
    code, out, err = await run(ringd, "admin-socket", "--target", running.address)
    assert (code, out.strip()) == (0, running.server.admin_addresses[0].removeprefix("unix:"))


async def test_with_a_token_admin_is_served_on_tcp_and_no_socket_is_made(serve):
    running = await serve([entry("guard")], server={"admin_token": TOKEN})

    assert running.server.admin_addresses == []
    assert list(Path(os.environ["RINGD_RUNTIME_DIR"]).glob("admin-*.sock")) == []
    admin = running.admin(running.address)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    authorised = (("authorization", f"Bearer {TOKEN}"),)
    listing = await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5, metadata=authorised)
    assert [p.name for p in listing.plugins] == ["guard"]


async def test_a_runtime_folder_open_to_others_is_made_owner_only(serve, monkeypatch, tmp_path):
    folder = tmp_path / "shared-run"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("RINGD_RUNTIME_DIR", str(folder))

    running = await serve([entry("guard")])

    assert running.server.admin_addresses[0].startswith(f"unix:{folder}/")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:50051", True),
        ("127.evil.example.com:50051", False),
        ("localhost:50051", True),
        ("LOCALHOST:50051", True),
        ("LocalHost.:50051", True),
        ("[::1]:50051", True),
        ("[::ffff:127.0.0.1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.7:50051", False),
        ("ringd.internal:50051", False),
        ("unix:/run/ringd/admin.sock", True),
        ("unix-abstract:ringd-admin", False),
    ],
)
def test_the_exposure_check_parses_addresses(address, local):
    assert local_only(address) is local


# ------------------------------------------------------------------ plugin files


PLUGIN = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse

class Outside(BasePlugin):
    name = "outside"
    hook = PluginHook.PRE_FLIGHT
    async def execute(self, ctx):
        ctx.metadata["outside"] = True
        return PluginResponse.passthrough()
"""


@pytest.fixture
def outside_file(tmp_path: Path) -> Path:
    """A plugin file in a folder beside (not inside) the workspace's."""
    folder = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    folder.mkdir()
    path = folder / "outside.py"
    path.write_text(PLUGIN)
    return path


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
def test_plugin_files_outside_the_config_folder_are_refused(workspace, outside_file, form):
    if form == "absolute":
        entrypoint = f"{outside_file}:Outside"
    elif form == "dotdot":
        entrypoint = f"../{outside_file.parent.name}/outside.py:Outside"
    else:
        (workspace.root / "inside.py").symlink_to(outside_file)
        entrypoint = "inside.py:Outside"
    path = workspace.write_config([entry("outside", entrypoint=entrypoint)])

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    message = str(refused.value)
    assert str(path) in message  # the file
    assert "plugins[0] ('outside') field 'entrypoint'" in message  # the entry and field
    assert str(outside_file) in message  # where it resolves
    assert "server.plugin_dirs" in message  # how to allow it


async def test_plugin_dirs_allows_a_folder_explicitly(serve, outside_file):
    running = await serve(
        [entry("outside", entrypoint=f"{outside_file}:Outside")],
        server={"plugin_dirs": [str(outside_file.parent)]},
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=5)

    assert answer.results[0].plugin == "outside"
    assert answer.metadata["outside"].bool_value is True


async def test_reload_refuses_a_plugin_file_outside_the_config_folder(serve, workspace, outside_file):
    running = await serve([entry("guard")])
    workspace.write_config([entry("outside", entrypoint=f"../{outside_file.parent.name}/outside.py:Outside")])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = refused.value.details() or ""
    assert "plugins[0] ('outside') field 'entrypoint'" in message
    assert "outside the config file's folder" in message
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=5)
    assert [r.plugin for r in answer.results] == ["guard"]  # the old generation serves on

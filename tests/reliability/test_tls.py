"""TLS and mTLS on the listen address, and the admin service on an address of its own.

The certificates are made at test time with the ``openssl`` command: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate, and a second CA whose
certificates the server must not accept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.rpc import ring_request
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

# Without the openssl command (Debian: openssl) the tests skip, but fail under CI=true,
# where scripts/ci-deps.sh installs it.
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None and os.environ.get("CI") != "true",
    reason="the openssl command is needed (apt-get install openssl)",
)

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
TOKEN = "admin-token-for-tls-tests"
PLUGINS = [entry("tagger", config={"set_metadata": {"tls": True}})]


def openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(map(str, args))}:\n{done.stderr}"


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN=ringd test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return key, cert


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path
    other_ca: Path
    other_client_key: Path
    other_client_cert: Path

    def channel_credentials(
        self, *, client: str | None = None, ca: Path | None = None
    ) -> grpc.ChannelCredentials:
        """Trusting ``ca`` (default: our CA); presenting the ``client`` ("ours", "other") cert, if any."""
        pair = {
            None: (None, None),
            "ours": (self.client_key.read_bytes(), self.client_cert.read_bytes()),
            "other": (self.other_client_key.read_bytes(), self.other_client_cert.read_bytes()),
        }[client]
        return grpc.ssl_channel_credentials(
            root_certificates=(ca or self.ca).read_bytes(), private_key=pair[0], certificate_chain=pair[1]
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder, "ca")
    server = make_leaf(
        folder,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    client = make_leaf(folder, "client", ca, "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    other_ca = make_ca(folder, "other-ca")
    other_client = make_leaf(
        folder, "other-client", other_ca, "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    return Certs(
        ca[1], server[0], server[1], client[0], client[1], other_ca[1], other_client[0], other_client[1]
    )


def tls_settings(certs: Certs, *, mutual: bool = False) -> dict[str, Any]:
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    if mutual:
        tls["client_ca_file"] = str(certs.ca)
    return {"tls": tls}


async def ring_status(target: str, credentials: grpc.ChannelCredentials | None) -> str:
    """OK (and the answer checked) or the status code name of the refused call."""
    channel = (
        grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    )
    async with channel:
        try:
            answer = await engine_grpc.PluginEngineServiceStub(channel).ExecuteRing(
                ring_request(PRE_FLIGHT, CHAT), timeout=3
            )
        except grpc.aio.AioRpcError as refused:
            return refused.code().name
    assert answer.metadata["tls"].bool_value is True
    return "OK"


async def admin_status(
    target: str, credentials: grpc.ChannelCredentials | None = None, token: str | None = None
) -> str:
    channel = (
        grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with channel:
        try:
            listing = await admin_grpc.PluginAdminServiceStub(channel).ListPlugins(
                admin_pb.ListPluginsRequest(), timeout=3, metadata=metadata
            )
        except grpc.aio.AioRpcError as refused:
            return refused.code().name
    assert [p.name for p in listing.plugins] == ["tagger"]
    return "OK"


async def services(target: str, credentials: grpc.ChannelCredentials | None = None) -> set[str]:
    """The services server reflection lists at ``target``."""
    channel = (
        grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reply = await call.read()
        call.cancel()
    return {service.name for service in reply.list_services_response.service}


async def test_tls_clients_connect_and_plaintext_clients_are_refused(serve, certs):
    running = await serve(PLUGINS, server=tls_settings(certs))
    port = running.address.rsplit(":", 1)[1]

    assert await ring_status(running.address, certs.channel_credentials()) == "OK"
    assert await ring_status(f"localhost:{port}", certs.channel_credentials()) == "OK"  # the DNS SAN
    assert await ring_status(running.address, None) == "UNAVAILABLE"  # plaintext on a TLS port
    # A client that does not trust the server's CA does not talk to it.
    assert await ring_status(running.address, certs.channel_credentials(ca=certs.other_ca)) == "UNAVAILABLE"
    # Health works over TLS, as load balancers need.
    async with grpc.aio.secure_channel(running.address, certs.channel_credentials()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # A unix socket is never TLS: the file system guards it.
    assert await ring_status(running.unix_address, None) == "OK"


async def test_mtls_refuses_clients_without_a_certificate_from_the_client_ca(serve, certs):
    running = await serve(PLUGINS, server=tls_settings(certs, mutual=True))

    assert await ring_status(running.address, certs.channel_credentials(client="ours")) == "OK"
    assert await ring_status(running.address, certs.channel_credentials()) == "UNAVAILABLE"
    assert await ring_status(running.address, certs.channel_credentials(client="other")) == "UNAVAILABLE"
    assert await ring_status(running.address, None) == "UNAVAILABLE"


async def test_the_admin_service_on_its_own_unix_socket_keeps_its_token(serve, certs, workspace):
    admin_socket = workspace.root / "admin.sock"
    running = await serve(
        PLUGINS,
        server={
            **tls_settings(certs),
            "admin_listen": [f"unix:{admin_socket}"],
            "admin_token": TOKEN,
        },
        unix=False,
    )
    (admin_address,) = running.server.admin_addresses
    main = running.address
    tls = certs.channel_credentials()

    # Not served on the main address, whatever the token.
    assert await admin_status(main, tls, TOKEN) == "UNIMPLEMENTED"
    assert "ringd.v1.PluginAdminService" not in await services(main, tls)
    assert "ringd.v1.PluginEngineService" in await services(main, tls)
    # Served on its own address, behind the bearer token.
    assert await admin_status(admin_address) == "UNAUTHENTICATED"
    assert await admin_status(admin_address, token="not-the-token") == "PERMISSION_DENIED"
    assert await admin_status(admin_address, token=TOKEN[:-1]) == "PERMISSION_DENIED"
    assert await admin_status(admin_address, token=TOKEN) == "OK"
    assert "ringd.v1.PluginAdminService" in await services(admin_address)
    # The engine is not served on the admin address.
    assert await ring_status(admin_address, None) == "UNIMPLEMENTED"
    # A reload through the admin address works.
    async with grpc.aio.insecure_channel(admin_address) as channel:
        reloaded = await admin_grpc.PluginAdminServiceStub(channel).ReloadConfig(
            admin_pb.ReloadConfigRequest(), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert reloaded.generation == 2
    assert await ring_status(main, tls) == "OK"


async def test_the_admin_service_on_its_own_tcp_address_uses_tls_too(serve, certs):
    running = await serve(
        PLUGINS,
        server={**tls_settings(certs, mutual=True), "admin_listen": ["127.0.0.1:0"], "admin_token": TOKEN},
    )
    (admin_address,) = running.server.admin_addresses
    assert admin_address != running.address
    mtls = certs.channel_credentials(client="ours")

    assert await admin_status(admin_address, mtls, TOKEN) == "OK"
    assert await admin_status(admin_address, mtls) == "UNAUTHENTICATED"
    assert await admin_status(admin_address, None, TOKEN) == "UNAVAILABLE"
    assert await admin_status(admin_address, certs.channel_credentials(), TOKEN) == "UNAVAILABLE"
    assert await admin_status(running.address, mtls, TOKEN) == "UNIMPLEMENTED"

"""Server reflection for every tool: method symbols, v1 beside v1alpha, documented descriptors.

grpcurl and ghz are the real binaries; grpcurl knows nothing but what reflection tells it.
ghz is installed from the Go module proxy (pinned) into .venv/gobin on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from support.rpc import BIN, ROOT, run
from support.workspace import entry

GRPCURL = BIN / "grpcurl"
GHZ_VERSION = "v0.120.0"
GHZ = ROOT / ".venv" / "gobin" / "ghz"


async def grpcurl(*args: str) -> tuple[int, str, str]:
    return await run(GRPCURL, "-max-time", "10", *args)


async def reflect(target: str, service: str, *requests: reflection_pb2.ServerReflectionRequest) -> list:
    """Send ``requests`` on one ServerReflectionInfo stream of ``service``; the answers in order."""
    async with grpc.aio.insecure_channel(target) as channel:
        info = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [answer async for answer in info(iter(requests))]


def files_of(
    answer: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = (
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in answer.file_descriptor_response.file_descriptor_proto
    )
    return {proto.name: proto for proto in protos}


async def test_grpcurl_describes_a_method_with_its_documentation(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl(
        "-plaintext", running.address, "describe", "ringd.v1.PluginEngineService.ExecuteRing"
    )

    assert code == 0, err
    assert "ringd.v1.PluginEngineService.ExecuteRing is a method:" in out
    assert "// Runs one ring over a request's context" in out
    assert (
        "rpc ExecuteRing ( .ringd.v1.ExecuteRingRequest ) returns ( .ringd.v1.ExecuteRingResponse );" in out
    )


async def test_grpcurl_describe_prints_each_fields_documentation(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl("-plaintext", running.address, "describe", "ringd.v1.BlockInfo")

    assert code == 0, err
    assert "// The HTTP status code, 400 to 599." in out
    assert "int32 status_code = 1;" in out
    assert '// A short machine-readable reason, for example "rate_limited"' in out


async def test_grpcurl_describes_admin_methods_and_health(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl(
        "-plaintext", running.address, "describe", "ringd.v1.PluginAdminService.ReloadConfig"
    )
    assert code == 0, err
    assert "rpc ReloadConfig" in out

    code, out, err = await grpcurl("-plaintext", running.address, "describe", "grpc.health.v1.Health.Check")
    assert code == 0, err
    assert "rpc Check ( .grpc.health.v1.HealthCheckRequest )" in out


async def test_an_unknown_symbol_is_named_in_the_error(serve):
    running = await serve([entry("tagger")])

    code, _, err = await grpcurl(
        "-plaintext", running.address, "describe", "ringd.v1.PluginEngineService.NoSuchMethod"
    )

    assert code != 0
    assert "ringd.v1.PluginEngineService.NoSuchMethod" in err


@pytest.mark.parametrize(
    "service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
)
async def test_both_reflection_versions_answer_with_documented_files(serve, service):
    running = await serve([entry("tagger")], server={"admin_token": "t0ken"})  # admin on the main port

    listed, method, by_name, missing = await reflect(
        running.address,
        service,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="ringd.v1.PluginEngineService.ExecuteRing"
        ),
        reflection_pb2.ServerReflectionRequest(file_by_filename="ringd/v1/plugin.proto"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="ringd.v1.Nope"),
    )

    names = [s.name for s in listed.list_services_response.service]
    assert names == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "ringd.v1.PluginAdminService",
        "ringd.v1.PluginEngineService",
    ]
    files = files_of(method)
    engine = files["ringd/v1/engine_service.proto"]
    # The requested file comes first, then what it imports (transitively).
    assert method.file_descriptor_response.file_descriptor_proto[0] == engine.SerializeToString(
        deterministic=True
    )
    assert {"ringd/v1/plugin.proto", "google/protobuf/struct.proto"} <= set(files)
    comments = [location.leading_comments for location in engine.source_code_info.location]
    assert any("Runs one ring over a request's context" in text for text in comments)
    assert "ringd/v1/plugin.proto" in files_of(by_name)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "ringd.v1.Nope" in missing.error_response.error_message


async def test_the_v1_reflection_service_describes_itself(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl(
        "-plaintext", running.address, "describe", "grpc.reflection.v1.ServerReflection"
    )

    assert code == 0, err
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in out


async def test_the_admin_address_lists_only_what_it_serves(serve, workspace):
    admin_socket = workspace.root / "admin.sock"
    running = await serve([entry("tagger")], server={"admin_listen": [f"unix:{admin_socket}"]})

    code, out, err = await grpcurl("-plaintext", "-unix", str(admin_socket), "list")
    assert code == 0, err
    assert "ringd.v1.PluginAdminService" in out.split()
    assert "ringd.v1.PluginEngineService" not in out.split()

    code, out, err = await grpcurl("-plaintext", running.address, "list")
    assert code == 0, err
    assert "ringd.v1.PluginAdminService" not in out.split()


@pytest.fixture(scope="session")
def ghz() -> str:
    """The ghz binary, installed from the Go module proxy at a pinned version on first use."""
    if not GHZ.exists():
        if shutil.which("go") is None:
            if os.environ.get("CI") == "true":
                pytest.fail("ghz needs go to install it (CI=true: a missing toolchain fails)")
            pytest.skip("ghz needs go to install it (apt-get install golang-go)")
        subprocess.run(
            ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            env={**os.environ, "GOBIN": str(GHZ.parent)},
            check=True,
            timeout=600,
        )
    return str(GHZ)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run compiles ghz from the Go module proxy
async def test_ghz_calls_a_method_found_through_reflection(serve, ghz):
    running = await serve([entry("tagger", config={"set_metadata": {"seen": True}})])
    request = {"ring": "PLUGIN_HOOK_PRE_FLIGHT", "context": {"body_struct": {"model": "m"}}}

    code, out, err = await run(
        ghz,
        "--insecure",
        "--call",
        "ringd.v1.PluginEngineService.ExecuteRing",
        "-d",
        json.dumps(request),
        "-n",
        "40",
        "-c",
        "2",
        "--format",
        "json",
        running.address,
    )

    assert code == 0, err
    report = json.loads(out)
    assert report["statusCodeDistribution"] == {"OK": 40}
    assert report["errorDistribution"] == {}

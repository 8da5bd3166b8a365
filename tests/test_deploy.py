"""deploy/: every file is valid YAML, and the manifests agree with ringd and with each other."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2
from ringd.server.app import build_server
from ringd.server.config import RingdConfig, parse_config
from ringd.server.engine import Engine
from support.process import RingdProcess

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
RINGD = Path(sys.executable).with_name("ringd")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def only(path: Path, kind: str) -> dict[str, Any]:
    found = [doc for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    every = pod_spec.get("initContainers", []) + pod_spec.get("containers", [])
    (found,) = [c for c in every if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def config_from(path: Path, configmap_name: str, monkeypatch: pytest.MonkeyPatch) -> RingdConfig:
    """The ringd.yaml of a ConfigMap, parsed as ringd parses it (RINGD_STORE not overriding)."""
    monkeypatch.delenv("RINGD_STORE", raising=False)
    configmaps = [d for d in documents(path) if d["kind"] == "ConfigMap"]
    (configmap,) = [d for d in configmaps if d["metadata"]["name"] == configmap_name]
    return parse_config(configmap["data"]["ringd.yaml"], source=f"{path.name} {configmap_name}")


def mounted_configmap(pod_spec: dict[str, Any], ringd: dict[str, Any], config_path: str) -> str:
    """Name of the ConfigMap mounted where ``--config`` points."""
    folder, filename = config_path.rsplit("/", 1)
    (mount,) = [m for m in ringd["volumeMounts"] if m["mountPath"] == folder]
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    assert filename == "ringd.yaml"
    return str(volume["configMap"]["name"])


def test_every_file_under_deploy_kubernetes_is_valid_yaml_with_kubernetes_objects() -> None:
    files = sorted(p for p in KUBERNETES.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {
        "deployment.yaml",
        "service.yaml",
        "sidecar.yaml",
        "networkpolicy.yaml",
    }
    for path in files:
        docs = documents(path)
        assert docs, f"{path} holds no YAML documents"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: {doc}"
            assert doc["metadata"].get("name"), f"{path}: a {doc['kind']} without a name"


def test_the_deployment_runs_3_replicas_with_grpc_probes_on_the_listen_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = KUBERNETES / "deployment.yaml"
    deployment = only(path, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    ringd = container(pod, "ringd")
    args = ringd["args"]
    assert args[0] == "serve"
    listen = flag(args, "--listen")
    assert listen == "0.0.0.0:50051"
    port = int(listen.rsplit(":", 1)[1])
    metrics_port = int(flag(args, "--metrics-listen").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in ringd["ports"]}
    assert ports == {"grpc": port, "metrics": metrics_port}
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == str(metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ringd[probe]["grpc"]["port"] == port, probe
    assert ringd["resources"]["requests"]
    assert ringd["resources"]["limits"]

    config = config_from(path, mounted_configmap(pod, ringd, flag(args, "--config")), monkeypatch)
    assert config.store.startswith("redis://")
    assert config.store == "redis://redis:6379/0"
    # The kubelet's SIGKILL comes after preStop and ringd's own drain, never during it.
    pre_stop = ringd["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config.server.grace_s


def test_the_deployment_runs_non_root_on_a_read_only_root_filesystem() -> None:
    pod = only(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    ringd = container(pod, "ringd")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert ringd["securityContext"]["readOnlyRootFilesystem"] is True
    assert ringd["securityContext"]["allowPrivilegeEscalation"] is False
    assert ringd["securityContext"]["capabilities"]["drop"] == ["ALL"]


async def test_the_configmap_plugins_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for path, name in (
        (KUBERNETES / "deployment.yaml", "ringd-config"),
        (KUBERNETES / "sidecar.yaml", "gateway-ringd-config"),
    ):
        config = config_from(path, name, monkeypatch)
        assert config.plugins
        engine = Engine()
        generation = await engine.start(config)
        try:
            errors = {s.name: s.loaded.load_error for s in generation.slots.values() if s.loaded.load_error}
            assert errors == {}, f"{path.name}: {errors}"
        finally:
            await engine.close(0)


def test_the_headless_service_selects_the_deployment_pods_on_the_grpc_port() -> None:
    service = only(KUBERNETES / "service.yaml", "Service")
    deployment = only(KUBERNETES / "deployment.yaml", "Deployment")
    assert service["spec"]["clusterIP"] == "None"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    ports = container(deployment["spec"]["template"]["spec"], "ringd")["ports"]
    (container_port,) = [p for p in ports if p["name"] == "grpc"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    assert port["port"] == container_port["containerPort"]


def sidecar_parts() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    pod = only(KUBERNETES / "sidecar.yaml", "Pod")["spec"]
    ringd = container(pod, "ringd")
    gateway = container(pod, "gateway")
    listen = flag(ringd["args"], "--listen")
    assert listen.startswith("unix:")
    socket_path = "/" + listen.removeprefix("unix:").lstrip("/")
    return pod, ringd, gateway, socket_path


def test_the_sidecar_socket_path_matches_between_gateway_and_ringd() -> None:
    pod, ringd, gateway, socket_path = sidecar_parts()
    assert socket_path == "/var/run/ringd/ringd.sock"
    folder = socket_path.rsplit("/", 1)[0]
    # The gateway dials the socket ringd listens on ...
    target = {e["name"]: e.get("value") for e in gateway["env"]}["RINGD_TARGET"]
    assert target in (f"unix://{socket_path}", f"unix:{socket_path}")
    # ... through one emptyDir mounted at the socket's folder in both containers.
    ringd_volume = {m["mountPath"]: m["name"] for m in ringd["volumeMounts"]}[folder]
    gateway_volume = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}[folder]
    assert ringd_volume == gateway_volume
    (volume,) = [v for v in pod["volumes"] if v["name"] == ringd_volume]
    assert "emptyDir" in volume
    # The health probe asks through the same socket.
    for probe in ("startupProbe", "livenessProbe"):
        assert f"unix://{socket_path}" in " ".join(ringd[probe]["exec"]["command"]), probe


def test_the_sidecar_keeps_sqlite_on_an_emptydir(monkeypatch: pytest.MonkeyPatch) -> None:
    pod, ringd, _, _ = sidecar_parts()
    config = config_from(
        KUBERNETES / "sidecar.yaml",
        mounted_configmap(pod, ringd, flag(ringd["args"], "--config")),
        monkeypatch,
    )
    assert not config.store.startswith(("redis://", "rediss://"))
    database = Path(config.store.removeprefix("sqlite://").removeprefix("sqlite:"))
    assert database.is_absolute()
    mounts = {m["mountPath"]: m["name"] for m in ringd["volumeMounts"]}
    volume_name = mounts[str(database.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == volume_name]
    assert "emptyDir" in volume
    assert pod["terminationGracePeriodSeconds"] > config.server.grace_s
    assert ringd["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_sidecar_health_probe_works_against_a_real_ringd_on_a_unix_socket() -> None:
    _, ringd, _, socket_path = sidecar_parts()
    probe = ringd["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["ringd", "health"]
    with tempfile.TemporaryDirectory(prefix="ringd-") as folder:  # short: socket paths max ~107 bytes
        local_socket = f"{folder}/ringd.sock"
        command = [str(RINGD), *(part.replace(socket_path, local_socket) for part in probe[1:])]
        nothing_yet = subprocess.run(command, capture_output=True, text=True, check=False)
        assert nothing_yet.returncode == 3, nothing_yet  # unreachable: nothing listens there yet

        server = RingdProcess("--listen", f"unix:{local_socket}", cwd=Path(folder)).start()
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
            assert result.returncode == 0, f"probe failed on a ready server: {shlex.join(command)}\n{result}"
        finally:
            assert server.stop() == 0, server.log()


# ------------------------------------------------------------------ the image and its probes

ROOT = DEPLOY.parent


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def exec_form(rest: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; shell form is refused."""
    parsed = json.loads(rest)
    assert isinstance(parsed, list), rest
    return [str(part) for part in parsed]


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_dockerfile_builds_in_two_stages_on_a_slim_python_and_copies_every_package() -> None:
    build, runtime = stages()
    assert "slim" in build[0][1]
    assert "slim" in runtime[0][1]
    assert build[0][1].split(" AS ")[0] == runtime[0][1].split(" AS ")[0]  # one base, one Python
    build_alias = build[0][1].split(" AS ")[1]
    # The runtime stage takes only the built virtualenv from the build stage: no sources.
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == [f"--from={build_alias} /opt/ringd /opt/ringd"]
    copied = {rest.split()[0] for keyword, rest in build if keyword == "COPY"}
    package_dirs = {
        path.split("/")[0] if path.startswith("src") else path
        for path in project()["tool"]["setuptools"]["package-dir"].values()
    }
    assert package_dirs <= copied, f"not copied into the image: {sorted(package_dirs - copied)}"
    for path in copied:
        assert (ROOT / path).exists(), path
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not copied & ignored, f".dockerignore hides what the Dockerfile copies: {copied & ignored}"
    assert {"tests", ".venv", ".git"} <= ignored


def test_the_image_runs_ringd_serve_as_the_deployments_non_root_user_with_a_healthcheck() -> None:
    runtime = dict(stages()[-1][1:])  # the last of each keyword
    user = runtime["USER"].split(":")
    pod = only(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    assert int(user[0]) != 0
    assert int(user[0]) == pod["securityContext"]["runAsUser"]
    assert int(user[1]) == pod["securityContext"]["runAsGroup"]
    assert exec_form(runtime["ENTRYPOINT"]) == ["ringd", "serve"]
    assert "0.0.0.0:50051" in exec_form(runtime["CMD"])
    assert set(runtime["EXPOSE"].split()) == {"50051", "9464"}
    # Read-only root: the working directory (where the default SQLite store lives) is a volume.
    assert exec_form(runtime["VOLUME"]) == [runtime["WORKDIR"]]
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime["ENV"]
    options, _, command = runtime["HEALTHCHECK"].partition(" CMD ")
    assert exec_form(command)[:2] == ["ringd", "health"]
    assert "--interval=" in options
    assert "--timeout=" in options


def test_the_manifests_use_the_image_of_this_version() -> None:
    version = project()["project"]["version"]
    for path, kind in ((KUBERNETES / "deployment.yaml", "Deployment"), (KUBERNETES / "sidecar.yaml", "Pod")):
        doc = only(path, kind)
        spec = doc["spec"]["template"]["spec"] if kind == "Deployment" else doc["spec"]
        assert container(spec, "ringd")["image"] == f"ghcr.io/example/ringd:{version}", path.name
    assert "image:" in (ROOT / "Makefile").read_text()


def test_readiness_rides_out_cpu_throttling_and_liveness_is_slower_still() -> None:
    pod = only(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    ringd = container(pod, "ringd")
    ready = ringd["readinessProbe"]
    live = ringd["livenessProbe"]
    # A throttled replica answers late, not never: several misses before it leaves the
    # endpoints, and each probe waits seconds, not the kubelet's default second.
    assert ready["failureThreshold"] >= 3
    assert ready["timeoutSeconds"] >= 3
    assert ready["failureThreshold"] * ready["periodSeconds"] >= 15
    assert (
        live["failureThreshold"] * live["periodSeconds"]
        >= 2 * ready["failureThreshold"] * ready["periodSeconds"]
    )
    # The startup probe gives the plugins time to load before liveness counts.
    startup = ringd["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30


def test_the_network_policy_lets_only_gateway_pods_reach_the_engine_port() -> None:
    policy = only(KUBERNETES / "networkpolicy.yaml", "NetworkPolicy")
    deployment = only(KUBERNETES / "deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {
        p["name"]: p["containerPort"]
        for p in container(deployment["spec"]["template"]["spec"], "ringd")["ports"]
    }

    def opens(rule: dict[str, Any], name: str) -> bool:
        return any(p["port"] in (name, ports[name]) for p in rule.get("ports", [])) or "ports" not in rule

    for port in (p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])):
        assert port in ports or port in ports.values(), f"the policy names a port ringd does not open: {port}"
    engine_rules = [rule for rule in policy["spec"]["ingress"] if opens(rule, "grpc")]
    assert engine_rules
    for rule in engine_rules:
        # Every peer is a pod selector with labels (no ipBlock, no "everyone" peer)
        # and no namespace selector that would widen it to other namespaces.
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, peer
            assert peer["podSelector"]["matchLabels"] == {"ringd.io/client": "gateway"}
    metrics_rules = [rule for rule in policy["spec"]["ingress"] if opens(rule, "metrics")]
    assert metrics_rules
    assert all(not opens(rule, "grpc") for rule in metrics_rules)


# ------------------------------------------------------------------ `ringd health` against a real server


async def health(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(RINGD), "health", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ringd_health_exit_codes_against_a_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RINGD_STORE", raising=False)
    monkeypatch.delenv("RINGD_TARGET", raising=False)
    socket_path = tmp_path / "r.sock"
    config = parse_config(f"version: v1\nstore: {tmp_path / 'ringd.db'}\n", source="test")
    server = await build_server(config, listen=["127.0.0.1:0", f"unix:{socket_path}"])
    try:
        tcp = server.addresses[0]
        assert await health("--target", tcp) == (0, f"ringd health: {tcp}: SERVING\n")
        code, out = await health("--target", f"unix://{socket_path}")
        assert (code, out.strip().endswith("SERVING")) == (0, True)
        # The image's HEALTHCHECK, pointed at this server.
        command = exec_form(dict(stages()[-1][1:])["HEALTHCHECK"].partition(" CMD ")[2])
        code, out = await health(*[tcp if part == "127.0.0.1:50051" else part for part in command[2:]])
        assert code == 0, out
        code, out = await health("--target", tcp, "--service", "no.such.Service")
        assert code == 1
        assert "unknown service 'no.such.Service'" in out
        code, out = await health("--target", tcp, "--timeout", "0")
        assert code == 2
        assert "--timeout must be a positive number" in out

        await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await health("--target", tcp) == (1, f"ringd health: {tcp}: NOT_SERVING\n")
    finally:
        await server.stop(0)
    nobody = f"127.0.0.1:{free_port()}"
    code, out = await health("--target", nobody, "--timeout", "2")
    assert code == 3
    assert f"{nobody}: not reachable (UNAVAILABLE" in out


async def test_ringd_health_loads_neither_the_config_nor_the_engine_stack(tmp_path: Path) -> None:
    config = parse_config(f"version: v1\nstore: {tmp_path / 'ringd.db'}\n", source="test")
    server = await build_server(config, listen=["127.0.0.1:0"])
    try:
        script = textwrap.dedent(f"""
            import sys
            from ringd.server.entry import main
            code = main(["health", "--target", "{server.addresses[0]}"])
            heavy = ("yaml", "opentelemetry", "ringd.server.config", "ringd.server.engine", "ringd.client")
            print(sorted(m for m in sys.modules if m.startswith(heavy)))
            sys.exit(code)
        """)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err
        assert out.decode().strip().endswith("[]"), out
    finally:
        await server.stop(0)

"""deploy/: every file is valid YAML, and the manifests agree with ringd and with each other."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from ringd.server.config import RingdConfig, parse_config
from ringd.server.engine import Engine

from tests.support.process import RingdProcess

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


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


def test_every_file_under_deploy_is_valid_yaml_with_kubernetes_objects() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"deployment.yaml", "service.yaml", "sidecar.yaml"}
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
    assert [p["containerPort"] for p in ringd["ports"]] == [port]
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
    (container_port,) = container(deployment["spec"]["template"]["spec"], "ringd")["ports"]
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
    assert probe[0] == "python"
    with tempfile.TemporaryDirectory(prefix="ringd-") as folder:  # short: socket paths max ~107 bytes
        local_socket = f"{folder}/ringd.sock"
        command = [sys.executable, *(part.replace(socket_path, local_socket) for part in probe[1:])]
        assert subprocess.run(command, capture_output=True, check=False).returncode != 0  # nothing there yet

        server = RingdProcess("--listen", f"unix:{local_socket}", cwd=Path(folder)).start()
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
            assert result.returncode == 0, f"probe failed on a ready server: {shlex.join(command)}\n{result}"
        finally:
            assert server.stop() == 0, server.log()

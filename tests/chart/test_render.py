"""helm lint and helm template of charts/corral, with default and non-default values.

The render is checked against the processes that read it: the operator's settings ConfigMap and
the gateway's env must parse into their pydantic-settings classes with the values given, and
every pod must meet Pod Security "restricted".
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral_operator.gateway.settings import GatewaySettings
from corral_operator.settings import OperatorSettings
from tests.chart.chart import (
    CHART,
    CUSTOM_VALUES,
    ROOT,
    container,
    helm,
    of_kind,
    one,
    plain_env,
    render,
)
from tests.support.pod_security import pod_templates, restricted_violations

pytestmark = pytest.mark.chart

CUSTOM = ("-f", str(CUSTOM_VALUES))


@pytest.mark.parametrize("args", [(), CUSTOM], ids=["default", "custom"])
def test_lint(args: tuple[str, ...]) -> None:
    result = helm("lint", "--strict", str(CHART), *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--set", "gateway.replicas=0"), "/gateway/replicas"),
        (("--set", "cacheProfiles.default.accessMode=Sometimes"), "accessMode"),
        (("--set", "runtime.image.pullPolicy=Maybe"), "pullPolicy"),
        (("--set", "operator.unknownKey=1"), "unknownKey"),
        (("--set", "image.digest=latest"), "/image/digest"),
        (("--set", "operator.serviceAccount.create=false"), "operator.serviceAccount.name"),
        (("--set", "gateway.terminationGracePeriodSeconds=5"), "terminationGracePeriodSeconds"),
        (("--set", "gateway.terminationGracePeriodSeconds=86400"), "terminationGracePeriodSeconds"),
        (("--set", "gateway.allowedHosts={evil host}"), "/gateway/allowedHosts/0"),
        (("--set", "gateway.allowedHosts={http://a.example}"), "/gateway/allowedHosts/0"),
    ],
)
def test_bad_values_are_refused(args: tuple[str, ...], error: str) -> None:
    result = helm("template", "x", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert error in result.stderr


@pytest.mark.parametrize("args", [(), CUSTOM], ids=["default", "custom"])
def test_every_pod_is_restricted(args: tuple[str, ...]) -> None:
    objects = render(*args)
    pods = [p for obj in objects for p in pod_templates(obj)]
    assert len(pods) == 2  # the operator and the gateway
    for pod_spec, pod_annotations in pods:
        assert restricted_violations(pod_spec, pod_annotations) == []
        assert pod_spec["securityContext"]["runAsUser"] != 0
        for item in pod_spec["containers"]:
            assert item["securityContext"]["readOnlyRootFilesystem"] is True


def test_operator_is_one_replica_recreated() -> None:
    deployment = one(render(*CUSTOM), "Deployment", "llm-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "corral-controller"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    operator = container(deployment, "operator")
    assert operator["image"] == (
        "registry.example.com/corral/operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert operator["livenessProbe"]["httpGet"]["port"] == "health"
    assert operator["ports"] == [{"name": "health", "containerPort": 9090, "protocol": "TCP"}]


def _operator_settings(
    objects: list[dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> OperatorSettings:
    data = one(objects, "ConfigMap", name)["data"]
    unknown = [
        key
        for key in data
        if not key.startswith("CORRAL_OPERATOR_")
        or key.removeprefix("CORRAL_OPERATOR_").lower() not in OperatorSettings.model_fields
    ]
    assert unknown == [], "settings the operator does not have"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    return OperatorSettings()


def test_operator_settings_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _operator_settings(render(), "corral-operator", monkeypatch)
    assert settings.namespaces == []
    assert settings.runtime_image == "ghcr.io/corral-dev/corral-runtime:0.1.0"
    assert settings.image_pull_policy == "IfNotPresent"
    [(name, profile)] = settings.cache_profiles.items()
    assert (name, profile.size, profile.access_mode) == ("default", "50Gi", "ReadWriteMany")
    # An empty storageClassName in values means "the cluster's default", so it is left unset.
    assert profile.storage_class_name is None
    assert (settings.default_resources.cpu, settings.default_resources.memory) == ("1", "2Gi")
    assert settings.gpu_tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert (settings.startup_seconds, settings.pull_backoff_limit) == (1800, 3)
    assert (settings.pull_deadline_seconds, settings.gc_deadline_seconds) == (21600, 600)
    assert (settings.resync_seconds, settings.pull_progress_seconds) == (60, 5)


def test_runtime_pods_admit_only_the_gateway_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's runtime NetworkPolicy selects the gateway pods this chart runs."""
    objects = render()
    settings = _operator_settings(objects, "corral-operator", monkeypatch)
    gateway = one(objects, "Deployment", "corral-gateway")
    assert settings.runtime_network_policy is True
    assert settings.gateway_namespace == "corral-system"
    assert settings.gateway_pod_labels == gateway["spec"]["selector"]["matchLabels"]
    assert gateway["spec"]["template"]["metadata"]["labels"].items() >= (
        settings.gateway_pod_labels.items()
    )
    assert settings.runtime_ingress_from == []
    off = render("--set", "networkPolicy.enabled=false")
    assert _operator_settings(off, "corral-operator", monkeypatch).runtime_network_policy is False
    assert of_kind(off, "NetworkPolicy") == []


def test_operator_settings_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _operator_settings(render(*CUSTOM), "llm-operator", monkeypatch)
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.runtime_image == "registry.example.com/corral/runtime:0.1.0-cuda"
    assert settings.image_pull_policy == "Always"
    profiles = {
        n: (p.size, p.storage_class_name, p.access_mode) for n, p in settings.cache_profiles.items()
    }
    assert profiles == {
        "default": ("200Gi", "nfs", "ReadWriteMany"),
        "local": ("100Gi", None, "ReadWriteOnce"),
    }
    assert (settings.default_resources.cpu, settings.default_resources.memory) == ("2", "8Gi")
    assert len(settings.gpu_tolerations) == 2
    assert settings.liveness_endpoint == "http://0.0.0.0:9090/healthz"
    assert (settings.startup_seconds, settings.pull_backoff_limit) == (3600, 5)
    assert settings.pull_deadline_seconds == 7200
    assert (settings.resync_seconds, settings.pull_progress_seconds) == (30, 5)
    assert settings.runtime_ingress_from == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_settings_change_rolls_the_operator() -> None:
    def settings_hash(*args: str) -> str:
        deployment = one(render(*args), "Deployment", "corral-operator")
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"]["corral.dev/settings-hash"]
        )

    assert settings_hash() == settings_hash()
    assert settings_hash() != settings_hash("--set", "cacheProfiles.default.size=1Ti")


def _gateway_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    unknown = [
        key
        for key in env
        if key.startswith("CORRAL_")
        and (
            not key.startswith("CORRAL_GATEWAY_")
            or key.removeprefix("CORRAL_GATEWAY_").lower() not in GatewaySettings.model_fields
        )
    ]
    assert unknown == [], "settings the gateway does not have"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return GatewaySettings()


def test_gateway_default(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render()
    deployment = one(objects, "Deployment", "corral-gateway")
    gateway = container(deployment, "gateway")
    assert gateway["command"] == ["python", "-m", "corral_operator.gateway"]
    settings = _gateway_settings(plain_env(gateway), monkeypatch)
    assert (settings.host, settings.port, settings.namespaces) == ("0.0.0.0", 11434, [])
    assert settings.api_key_secret is None
    # Bound to every address, with no allowed hosts: every Host is served; local origins only.
    assert (settings.allowed_hosts, settings.allowed_origins) == ([], [])
    # Graceful removal: a preStop sleep while the Endpoints drop the pod, then a drain that
    # ends before the grace does.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    assert gateway["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert settings.graceful_shutdown_seconds == 50
    service = one(objects, "Service", "corral-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert of_kind(objects, "ServiceMonitor") == []
    # NetworkPolicies are on by default.
    assert sorted(p["metadata"]["name"] for p in of_kind(objects, "NetworkPolicy")) == [
        "corral-gateway",
        "corral-operator",
    ]


def test_gateway_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(*CUSTOM)
    deployment = one(objects, "Deployment", "llm-gateway")
    assert deployment["spec"]["replicas"] == 2
    gateway = container(deployment, "gateway")
    settings = _gateway_settings(plain_env(gateway), monkeypatch)
    assert (settings.port, settings.namespaces) == (8000, ["team-a", "team-b"])
    assert settings.api_key_secret == "corral-system/corral-api-keys"
    assert (settings.hold_deadline_seconds, settings.hold_queue_size) == (120, 10)
    assert settings.target_in_flight_per_pod == 2.5
    # The Service's own names join the allowed hosts, so that clients in the cluster still work.
    assert settings.allowed_hosts == [
        "llm.example.com",
        ".corp.example",
        "llm-gateway",
        "llm-gateway.corral-system",
        "llm-gateway.corral-system.svc",
        "llm-gateway.corral-system.svc.cluster.local",
    ]
    assert settings.allowed_origins == ["https://chat.example.com", "https://*.corp.example"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 130
    assert settings.graceful_shutdown_seconds == 120
    assert gateway["ports"][0]["containerPort"] == 8000
    service = one(objects, "Service", "llm-gateway")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 80


def test_optional_objects() -> None:
    objects = render(*CUSTOM)
    monitors = of_kind(objects, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["llm-gateway", "llm-runtime"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    runtime = one(objects, "ServiceMonitor", "llm-runtime")
    assert runtime["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    gateway_policy = one(objects, "NetworkPolicy", "llm-gateway")
    [rule] = gateway_policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"corral.dev/clients": "true"}}}]
    assert one(objects, "NetworkPolicy", "llm-operator")["spec"]["ingress"] == []


def test_crds_follow_install_and_keep() -> None:
    crds = of_kind(render(), "CustomResourceDefinition")
    assert len(crds) == 2
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for crd in of_kind(render(*CUSTOM), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    assert of_kind(render("--set", "crds.install=false"), "CustomResourceDefinition") == []


def test_notes_say_how_to_call_the_gateway() -> None:
    result = helm(
        "install", "corral", str(CHART), "--dry-run=client", "-n", "ai", *CUSTOM, check=False
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "http://llm-gateway.ai.svc:80" in notes
    assert "port-forward svc/llm-gateway 11434:80" in notes
    assert "Authorization: Bearer" in notes
    assert "team-a, team-b" in notes


def test_install_manifest_is_current() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "render-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_install_manifest_check_fails_when_stale(tmp_path: Path) -> None:
    # The check compares against the chart, so a changed chart makes the committed file stale.
    chart_copy = tmp_path / "repo"
    (chart_copy / "scripts").mkdir(parents=True)
    (chart_copy / "manifests").mkdir()
    script = (ROOT / "scripts" / "render-manifests.sh").read_text()
    (chart_copy / "scripts" / "render-manifests.sh").write_text(script)
    subprocess.run(["cp", "-r", str(CHART.parent), str(chart_copy / "charts")], check=True)
    (chart_copy / "manifests" / "install.yaml").write_text(
        (ROOT / "manifests" / "install.yaml").read_text()
    )
    env_helm = {"HELM": str(ROOT / ".tools" / "bin" / "helm"), "PATH": "/usr/bin:/bin"}
    check = ["bash", str(chart_copy / "scripts" / "render-manifests.sh"), "--check"]
    assert subprocess.run(check, env=env_helm, capture_output=True, timeout=120).returncode == 0
    values = chart_copy / "charts" / "corral" / "values.yaml"
    values.write_text(values.read_text().replace("size: 50Gi", "size: 60Gi"))
    stale = subprocess.run(check, env=env_helm, capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1
    assert "stale" in stale.stderr


def test_install_manifest_starts_with_a_restricted_namespace() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    namespace = docs[0]
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [d for d in docs[1:] if d["kind"] not in _CLUSTER_SCOPED]
    assert {d["metadata"]["namespace"] for d in namespaced} == {namespace["metadata"]["name"]}


_CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}

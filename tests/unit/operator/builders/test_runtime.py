from __future__ import annotations

import os
from typing import Any

import pytest

from corral_operator.builders.memory import memory_budget
from corral_operator.builders.runtime import (
    ServedModel,
    build_deployment,
    build_network_policy,
    build_service,
    shutdown_budget,
)
from corral_operator.settings import OperatorSettings
from corral_runtime.settings import RuntimeSettings
from tests.unit.operator.factories import server

pytestmark = pytest.mark.unit

MODELS = [ServedModel("gemma", "gemma3:270m", "sha256:ab")]


def _deployment(**spec: Any) -> dict[str, Any]:
    return build_deployment(
        server(**spec),
        replicas=2,
        claim="corral-cache-default",
        models=MODELS,
        settings=OperatorSettings(),
    )


def _runtime_settings(dep: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> RuntimeSettings:
    """The runtime's settings in a pod of ``dep``: its environment, nothing of this one's."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    for item in _container(dep)["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    return RuntimeSettings()


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


class TestDeployment:
    def test_is_pure(self) -> None:
        assert _deployment() == _deployment()

    def test_restricted_pod_security(self) -> None:
        pod = _deployment()["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = _container(_deployment())["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in _container(_deployment())["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts

    def test_gpus_tolerations_and_placement(self) -> None:
        dep = _deployment(
            resources={"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "4", "memory": "8Gi"},
            nodeSelector={"pool": "gpu"},
            runtimeClassName="nvidia",
            tolerations=[{"key": "x", "operator": "Exists"}],
            affinity={"nodeAffinity": {}},
        )
        pod = dep["spec"]["template"]["spec"]
        res = _container(dep)["resources"]
        assert res["requests"] == {"cpu": "4", "memory": "8Gi", "amd.com/gpu": "2"}
        assert res["limits"] == {"memory": "8Gi", "amd.com/gpu": "2"}
        assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "x"]
        assert pod["nodeSelector"] == {"pool": "gpu"}
        assert pod["runtimeClassName"] == "nvidia"
        assert pod["affinity"] == {"nodeAffinity": {}}
        assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}

    def test_cpu_only_has_no_gpu_request_or_toleration(self) -> None:
        dep = _deployment()
        assert "tolerations" not in dep["spec"]["template"]["spec"]
        assert set(_container(dep)["resources"]["requests"]) == {"cpu", "memory"}

    def test_runtime_settings_become_env(self) -> None:
        dep = _deployment(
            runtime={
                "contextLength": 8192,
                "parallel": 4,
                "gpuLayers": "auto",
                "flashAttention": True,
                "extraArgs": ["--threads", "2"],
                "env": [{"name": "CORRAL_PARALLEL", "value": "8"}],
            },
            auth={"apiKeySecretRef": {"name": "keys", "key": "k"}},
        )
        container = _container(dep)
        env = [(e["name"], e.get("value")) for e in container["env"]]
        assert ("CORRAL_CONTEXT_LENGTH", "8192") in env
        assert ("CORRAL_FLASH_ATTENTION", "true") in env
        assert env[-1] == ("CORRAL_PARALLEL", "8")  # the user's env wins, coming last
        secret = next(e for e in container["env"] if e["name"] == "CORRAL_API_KEY")
        assert secret["valueFrom"]["secretKeyRef"] == {"name": "keys", "key": "k"}
        assert container["args"][-2:] == ["--threads", "2"]

    def test_the_runtime_reads_every_setting_the_builder_passes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Each spec.runtime field becomes an environment variable the runtime's settings read
        # (kvCacheType was once passed and never read).
        runtime = {
            "contextLength": 8192,
            "parallel": 4,
            "gpuLayers": 12,
            "flashAttention": True,
            "kvCacheType": "q8_0",
        }
        settings = _runtime_settings(_deployment(runtime=runtime), monkeypatch)
        assert (settings.context_length, settings.parallel, settings.gpu_layers) == (8192, 4, 12)
        assert settings.flash_attention is True
        assert settings.kv_cache_type == "q8_0"
        assert settings.max_loaded_models == 1
        assert settings.memory_budget_bytes == memory_budget("2Gi")

    def test_the_runtime_reads_the_priority_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        priority = {
            "defaultClass": "batch",
            "agingSeconds": 12,
            "reservedSlots": 1,
            "shares": {"batch": 0.75, "interactive": 0.5},
            "apiKeys": [{"sha256": "a" * 64, "class": "batch"}],
        }
        dep = _deployment(priority=priority)
        # The keys and the default class are the gateway's: no pod is told them.
        assert not any("KEY" in name and "PRIORITY" in name for name in _env(dep))
        settings = _runtime_settings(dep, monkeypatch)
        assert settings.priority_shares == {"batch": 0.75, "interactive": 0.5}
        assert settings.priority_aging_seconds == 12
        assert settings.priority_reserved_slots == 1

    def test_no_priority_spec_leaves_the_runtimes_defaults(self) -> None:
        env = _env(_deployment())
        assert "CORRAL_PRIORITY_SHARES" not in env
        assert "CORRAL_PRIORITY_AGING_SECONDS" not in env
        assert "CORRAL_PRIORITY_RESERVED_SLOTS" not in env

    def test_pods_evict_by_memory_not_by_count(self) -> None:
        env = _env(_deployment(models=["a", "b", "c", "d"], resources={"memory": "3Gi"}))
        # Four models may stay loaded where memory allows (the runtime's default is three).
        assert env["CORRAL_MAX_LOADED_MODELS"] == "4"
        assert env["CORRAL_MEMORY_BUDGET_BYTES"] == str(memory_budget("3Gi"))

    def test_the_budget_follows_the_memory_limit(self) -> None:
        small = _env(_deployment(resources={"memory": "1Gi"}))["CORRAL_MEMORY_BUDGET_BYTES"]
        large = _env(_deployment(resources={"memory": "8Gi"}))["CORRAL_MEMORY_BUDGET_BYTES"]
        default = _env(_deployment(resources={}))["CORRAL_MEMORY_BUDGET_BYTES"]
        assert int(str(small)) < int(str(default)) < int(str(large)) < 8 * 1024**3
        assert default == str(memory_budget(OperatorSettings().default_resources.memory))

    def test_a_gpu_pod_budgets_its_host_memory_alike(self) -> None:
        # The runtime plans what it offloads against the VRAM it reads; the budget is the host's.
        env = _env(_deployment(resources={"gpus": 1, "memory": "8Gi"}))
        assert env["CORRAL_MEMORY_BUDGET_BYTES"] == str(memory_budget("8Gi"))
        assert env["CORRAL_MAX_LOADED_MODELS"] == "1"

    def test_the_users_env_sets_its_own_budget(self) -> None:
        mine = {"name": "CORRAL_MEMORY_BUDGET_BYTES", "value": "1000"}
        dep = _deployment(resources={"memory": "8Gi"}, runtime={"env": [mine]})
        assert _container(dep)["env"][-1] == mine

    def test_pods_preload_the_servers_first_model(self, monkeypatch: pytest.MonkeyPatch) -> None:
        served = [ServedModel("gemma", "gemma3:270m", None), ServedModel("qwen", "qwen:0.5b", None)]
        dep = build_deployment(
            server(models=["gemma", "qwen"]),
            replicas=1,
            claim="corral-cache-default",
            models=served,
            settings=OperatorSettings(),
        )
        # The served (runtime) name, not the Model object's; only the first model.
        assert _runtime_settings(dep, monkeypatch).preload == ["gemma3:270m"]

    def test_no_ready_model_no_preload(self) -> None:
        dep = build_deployment(
            server(), replicas=0, claim="c", models=[], settings=OperatorSettings()
        )
        assert "CORRAL_PRELOAD" not in _env(dep)

    def test_probes_sized_for_model_load(self) -> None:
        container = _container(_deployment(runtime={"startupSeconds": 600}))
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    def test_owner_and_models_annotation(self) -> None:
        dep = _deployment()
        owner = dep["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelServer",
            "uid-srv",
            True,
        )
        annotation = dep["spec"]["template"]["metadata"]["annotations"]["corral.dev/models"]
        assert "sha256:ab" in annotation


def test_service_selects_the_runtime_pods() -> None:
    svc = build_service(server())
    dep = _deployment()
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == 11434
    assert svc["metadata"]["name"] == dep["metadata"]["name"] == "corral-srv"


def _env(dep: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in _container(dep)["env"]}


class TestPerimeterAndRemoval:
    def test_pods_serve_no_model_management(self) -> None:
        assert _env(_deployment())["CORRAL_MANAGEMENT"] == "false"

    def test_pods_serve_their_service_names_only(self) -> None:
        hosts = _env(_deployment())["CORRAL_ALLOWED_HOSTS"]
        assert hosts == (
            "corral-srv,corral-srv.ns,corral-srv.ns.svc,corral-srv.ns.svc.cluster.local"
        )

    def test_the_users_env_can_turn_management_back_on(self) -> None:
        dep = _deployment(runtime={"env": [{"name": "CORRAL_MANAGEMENT", "value": "true"}]})
        assert _container(dep)["env"][-1] == {"name": "CORRAL_MANAGEMENT", "value": "true"}

    def test_default_grace_pre_stop_and_drain(self) -> None:
        dep = _deployment()
        pod = dep["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 60
        pre_stop = _container(dep)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop == ["sleep", "5"]
        assert _env(dep)["CORRAL_GRACEFUL_SHUTDOWN_SECONDS"] == "50"

    def test_the_grace_comes_from_the_modelserver(self) -> None:
        dep = _deployment(terminationGracePeriodSeconds=600)
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600
        assert _env(dep)["CORRAL_GRACEFUL_SHUTDOWN_SECONDS"] == "590"

    @pytest.mark.parametrize("grace", [10, 11, 20, 60, 3600])
    def test_pre_stop_and_drain_fit_in_the_grace(self, grace: int) -> None:
        pre_stop, drain = shutdown_budget(grace)
        assert pre_stop >= 1 and drain >= 1
        assert pre_stop + drain < grace


class TestNetworkPolicy:
    def test_selects_the_runtime_pods(self) -> None:
        policy = build_network_policy(server(), OperatorSettings())
        selector = _deployment()["spec"]["selector"]["matchLabels"]
        assert policy["spec"]["podSelector"] == {"matchLabels": selector}
        assert policy["metadata"]["namespace"] == "ns"
        assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-srv"
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]

    def test_ingress_only_from_the_gateway_on_the_runtime_port(self) -> None:
        settings = OperatorSettings(
            gateway_namespace="corral-system",
            gateway_pod_labels={"app.kubernetes.io/component": "gateway", "x": "y"},
        )
        [rule] = build_network_policy(server(), settings)["spec"]["ingress"]
        assert rule["ports"] == [{"port": 11434, "protocol": "TCP"}]
        assert rule["from"] == [
            {
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/component": "gateway", "x": "y"}
                },
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "corral-system"}
                },
            }
        ]

    def test_extra_peers_are_added(self) -> None:
        prometheus = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
        settings = OperatorSettings(runtime_ingress_from=[prometheus])
        [rule] = build_network_policy(server(), settings)["spec"]["ingress"]
        assert rule["from"][1] == prometheus
        assert "namespaceSelector" not in rule["from"][0]  # the gateway in the same namespace

    def test_egress_is_dns_only(self) -> None:
        [rule] = build_network_policy(server(), OperatorSettings())["spec"]["egress"]
        assert rule == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}

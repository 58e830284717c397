from __future__ import annotations

from typing import Any

import pytest

from corral_operator.builders.runtime import ServedModel, build_deployment, build_service
from corral_operator.settings import OperatorSettings
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

"""What ``corral deploy`` applies, and the flag combinations it refuses before calling the API."""

from __future__ import annotations

import pytest

from corral_operator.cli.objects import DeployRequest, model_object, server_object

pytestmark = pytest.mark.unit


def test_default_deploy() -> None:
    request = DeployRequest("gemma3:270m")
    assert request.problems() == []
    assert model_object(request, "ns") == {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "gemma3-270m", "namespace": "ns"},
        "spec": {"source": "ollama://gemma3:270m"},
    }
    assert server_object(request, "ns") == {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "gemma3-270m", "namespace": "ns"},
        "spec": {
            "models": ["gemma3-270m"],
            "minReplicas": 0,
            "maxReplicas": 1,
            "keepAliveSeconds": 300,
            "maxKeepAliveSeconds": 3600,
            "resources": {"gpus": 0},
        },
    }


def test_every_flag_lands_in_the_spec() -> None:
    request = DeployRequest(
        "hf://org/repo/Tiny-Q8_0.gguf",
        gpus=2,
        min_replicas=1,
        max_replicas=3,
        keep_alive_seconds=60,
        max_keep_alive_seconds=-1,
        cpu="500m",
        memory="8Gi",
    )
    model = model_object(request, "ns")
    assert model["spec"] == {"source": "hf://org/repo/Tiny-Q8_0.gguf"}
    spec = server_object(request, "ns")["spec"]
    assert spec["models"] == [model["metadata"]["name"]] == ["tiny-q8-0"]
    assert (spec["minReplicas"], spec["maxReplicas"], spec["keepAliveSeconds"]) == (1, 3, 60)
    assert spec["maxKeepAliveSeconds"] == -1
    assert spec["resources"] == {"gpus": 2, "cpu": "500m", "memory": "8Gi"}


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (DeployRequest("m:1", min_replicas=2, max_replicas=1), "greater than --max"),
        (DeployRequest("m:1", max_replicas=0), "at least 1"),
        (DeployRequest("m:1", gpus=-1), "cannot be negative"),
    ],
)
def test_refused_combinations(request_: DeployRequest, problem: str) -> None:
    assert any(problem in p for p in request_.problems())

"""The runtime Deployment sized from its models: GPUs, memory, the GPU memory its nodes must have
and the tensor split, each only where the spec does not say."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.builders.memory import memory_budget
from corral_operator.builders.runtime import PodSizing, ServedModel, build_deployment
from corral_operator.settings import OperatorSettings
from corral_runtime.engine.llama import tensor_split_of
from corral_runtime.settings import RuntimeSettings
from tests.unit.operator.factories import server

pytestmark = pytest.mark.unit

BIG = PodSizing(
    memory="9000000000", gpus=2, min_gpu_memory_mib=20000, tensor_split=(1, 1), gpu_layers=81
)
GPU_LABEL_TERM = {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["19999"]}


def _pod(sizing: PodSizing, **spec: Any) -> dict[str, Any]:
    dep = build_deployment(
        server(**spec),
        replicas=1,
        claim="corral-cache-default",
        models=[ServedModel("gemma", "gemma3:270m", None)],
        settings=OperatorSettings(),
        sizing=sizing,
    )
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


def test_a_sized_pod_asks_for_its_gpus_and_nodes_whose_gpus_hold_its_share() -> None:
    pod = _pod(BIG, resources={})
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["limits"]["memory"] == "9000000000"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [GPU_LABEL_TERM]}]
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu"}
    env = _env(pod)
    assert env["CORRAL_TENSOR_SPLIT"] == "1,1"
    assert env["CORRAL_GPU_LAYERS"] == "81"  # every layer, across both GPUs
    assert env["CORRAL_MEMORY_BUDGET_BYTES"] == str(memory_budget("9000000000"))


def test_explicit_resources_win() -> None:
    pod = _pod(BIG, resources={"gpus": 1, "memory": "4Gi"})
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"memory": "4Gi", "nvidia.com/gpu": "1"}
    # The split was made for two GPUs; the pod has one: llama.cpp's own choice stands.
    assert "CORRAL_TENSOR_SPLIT" not in _env(pod)
    assert "CORRAL_GPU_LAYERS" not in _env(pod)
    # The spec's gpuLayers wins over offloading every layer.
    env = _env(_pod(BIG, resources={}, runtime={"gpuLayers": 40}))
    assert (env["CORRAL_TENSOR_SPLIT"], env["CORRAL_GPU_LAYERS"]) == ("1,1", "40")


def test_the_gpu_memory_term_joins_every_term_of_the_specs_affinity() -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    pool = {"key": "pool", "operator": "Exists"}
    preferred = [{"weight": 1, "preference": {"matchExpressions": [pool]}}]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [pool]}]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": preferred,
        }
    }
    pod = _pod(BIG, resources={}, affinity=affinity)
    node_affinity = pod["affinity"]["nodeAffinity"]
    terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [zone, GPU_LABEL_TERM]},
        {"matchExpressions": [pool, GPU_LABEL_TERM]},
    ]
    assert node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    # The spec itself is not changed.
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0] == {"matchExpressions": [zone]}


def test_without_sizing_nothing_changes() -> None:
    pod = _pod(PodSizing(), resources={})
    assert "affinity" not in pod
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "2Gi"}
    assert "CORRAL_TENSOR_SPLIT" not in _env(pod)


def test_the_runtime_reads_the_tensor_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TENSOR_SPLIT", _env(_pod(BIG, resources={}))["CORRAL_TENSOR_SPLIT"])
    assert tensor_split_of(RuntimeSettings().tensor_split) == (1.0, 1.0)
    assert tensor_split_of(RuntimeSettings(tensor_split="").tensor_split) == ()
    with pytest.raises(ValueError, match="tensor_split"):
        RuntimeSettings(tensor_split="1;1")

"""ModelServers sized from their models on the real control plane: fake GPU nodes of different
GPU memory (GPU feature discovery's ``nvidia.com/gpu.memory`` label, in MiB) and the real
scheduler. A Model pulled from a GGUF with Llama 3.1 70B's header (a sparse file: the real
tensor table, no weights) reports what the runtime's pull writes; a server for it gets the GPUs
and the node affinity its estimate asks for and is bound only to the node whose GPUs hold it
(its pod stays Pending there: no kubelet runs it); one that fits nowhere says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from corral_runtime.commands.models import pull_result
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for
from tests.support.gguf_shapes import LLAMA_31_70B, write_sparse_gguf

pytestmark = pytest.mark.cluster

MIB = 1024 * 1024


GPU_MIB = {"small": 16384, "large": 81920}


def _add_gpu_node(cluster: Cluster, name: str, gpu_mib: int) -> None:
    """A fake two-GPU node of ``gpu_mib`` MiB GPUs that only this test's pods tolerate."""
    cluster.add_node(
        name,
        gpus=2,
        labels={"corral.dev/test-pool": cluster.ns, "nvidia.com/gpu.memory": str(gpu_mib)},
        taints=[{"key": "corral.dev/test", "value": cluster.ns, "effect": "NoSchedule"}],
    )


@pytest.fixture
def gpu_node_names(cluster: Cluster) -> Iterator[dict[str, str]]:
    """Names for a 16 GiB ("small") and an 80 GiB ("large") GPU node, and the cache's volume;
    the nodes a test adds under these names are deleted after it."""
    suffix = uuid.uuid4().hex[:8]
    names = {"small": f"t4-{suffix}", "large": f"h100-{suffix}"}
    cluster.bind_cache_volume(f"pv-{suffix}")
    yield names
    for name in names.values():
        try:
            cluster.core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    cluster.core.delete_persistent_volume(f"pv-{suffix}")


@pytest.fixture
def gpu_nodes(cluster: Cluster, gpu_node_names: dict[str, str]) -> dict[str, str]:
    """Both GPU nodes, there from the start."""
    for size, name in gpu_node_names.items():
        _add_gpu_node(cluster, name, GPU_MIB[size])
    return gpu_node_names


def _llama_70b_result(tmp_path: Path) -> dict[str, Any]:
    """The termination message ``corral pull`` writes for a GGUF with Llama 3.1 70B's header."""
    path = write_sparse_gguf(tmp_path / "llama-70b.gguf", LLAMA_31_70B)
    stored = SimpleNamespace(
        name=SimpleNamespace(display="llama3.1:70b"),
        model_digest="sha256:" + "7" * 64,
        size=path.stat().st_size,
        model_path=path,
    )
    return json.loads(json.dumps(pull_result(stored)))


def _server(
    cluster: Cluster, name: str, runtime: dict[str, Any], resources: dict[str, Any] | None = None
) -> None:
    cluster.create(
        "modelservers",
        {
            "kind": "ModelServer",
            "metadata": {"name": name},
            "spec": {
                "models": ["llama"],
                "minReplicas": 1,
                "resources": resources or {},
                "runtime": runtime,
                "nodeSelector": {"corral.dev/test-pool": cluster.ns},
                "tolerations": [
                    {
                        "key": "corral.dev/test",
                        "operator": "Equal",
                        "value": cluster.ns,
                        "effect": "NoSchedule",
                    }
                ],
            },
        },
    )


def test_a_big_model_is_placed_where_its_gpus_fit_and_a_bigger_one_nowhere(
    cluster: Cluster, operator: Operator, gpu_nodes: dict[str, str], tmp_path: Path
) -> None:
    cluster.ready_model("llama", source="llama3.1:70b", result=_llama_70b_result(tmp_path))
    status = cluster.get("models", "llama")["status"]  # type: ignore[index]
    assert (status["blockCount"], status["headCountKV"]) == (80, 8)
    assert status["weightsBytes"] > 42 * 10**9

    # 8192 tokens: about 46 GiB; a 16 GiB GPU (two on a node) is too small, an 80 GiB one not.
    _server(cluster, "fits", {"contextLength": 8192, "parallel": 1})
    pod = wait_for(
        lambda: next(
            (p for p in cluster.job_pods("corral.dev/modelserver=fits") if p.spec.node_name),
            None,
        ),
        60,
        "the pod bound to a node",
    )
    assert pod.spec.node_name == gpu_nodes["large"]
    assert pod.status.phase == "Pending"  # bound; no kubelet runs it
    container = pod.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    sizing = cluster.get("modelservers", "fits")["status"]["sizing"]  # type: ignore[index]
    assert sizing["gpus"] == 1 and 40 * 1024 * MIB < sizing["perGpuBytes"] < 80 * 1024 * MIB
    required = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    (term,) = required.node_selector_terms
    (wanted,) = term.match_expressions
    assert (wanted.key, wanted.operator) == ("nvidia.com/gpu.memory", "Gt")
    assert int(wanted.values[0]) == -(-sizing["perGpuBytes"] // MIB) - 1

    # Its whole context for four slots: a KV cache of about 160 GiB, more than two 80 GiB GPUs.
    _server(cluster, "too-big", {"contextLength": 131072, "parallel": 4})
    ready = cluster.wait_condition("modelservers", "too-big", "Ready", "False", "DoesNotFit")
    assert "per GPU" in ready["message"] and "80.0 GiB" in ready["message"]
    assert gpu_nodes["large"] in ready["message"]
    assert not cluster.job_pods("corral.dev/modelserver=too-big")
    too_big = cluster.get("modelservers", "too-big")["status"]["sizing"]  # type: ignore[index]
    assert too_big["kvCacheBytes"] == 131072 * 4 * 80 * 8 * (128 + 128) * 2  # 160 GiB


def _bound_pod(cluster: Cluster, server: str) -> Any:
    return wait_for(
        lambda: next(
            (p for p in cluster.job_pods(f"corral.dev/modelserver={server}") if p.spec.node_name),
            None,
        ),
        60,
        f"{server}'s pod bound to a node",
    )


# No resync: only the node watch can re-size a server once its Model is Ready.
@pytest.mark.parametrize("operator_env", [{"CORRAL_OPERATOR_RESYNC_SECONDS": "0"}])
def test_a_server_that_fit_nowhere_is_placed_once_a_node_that_holds_it_joins(
    cluster: Cluster,
    operator: Operator,
    gpu_node_names: dict[str, str],
    tmp_path: Path,
    operator_env: dict[str, str],
) -> None:
    _add_gpu_node(cluster, gpu_node_names["small"], GPU_MIB["small"])
    cluster.ready_model("llama", source="llama3.1:70b", result=_llama_70b_result(tmp_path))
    # About 46 GiB: more than two 16 GiB GPUs hold.
    _server(cluster, "waits", {"contextLength": 8192, "parallel": 1})
    cluster.wait_condition("modelservers", "waits", "Ready", "False", "DoesNotFit")
    # A CPU server by its spec: no node's GPUs change its plan.
    _server(cluster, "on-cpu", {"contextLength": 8192}, {"gpus": 0, "memory": "60Gi"})
    _bound_pod(cluster, "on-cpu")
    assert not cluster.job_pods("corral.dev/modelserver=waits")

    _add_gpu_node(cluster, gpu_node_names["large"], GPU_MIB["large"])
    pod = _bound_pod(cluster, "waits")
    assert pod.spec.node_name == gpu_node_names["large"]
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    required = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    (term,) = required.node_selector_terms
    (wanted,) = term.match_expressions
    assert (wanted.key, wanted.operator) == ("nvidia.com/gpu.memory", "Gt")
    sizing = cluster.get("modelservers", "waits")["status"]["sizing"]  # type: ignore[index]
    assert sizing["gpus"] == 1
    resized = {
        line.rsplit(" ", 1)[-1]
        for line in operator.log().splitlines()
        if "re-sizing ModelServer" in line
    }
    assert resized == {f"{cluster.ns}/waits"}

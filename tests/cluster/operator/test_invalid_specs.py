"""A ModelServer whose settings contradict each other is reported, not half-applied, on the
real control plane (1.20: no CEL rules, so the operator checks what the schema cannot)."""

from __future__ import annotations

import pytest

from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster

DEPLOYMENT = "corral-srv"


def _deployments(cluster: Cluster) -> list[str]:
    return [d.metadata.name for d in cluster.apps.list_namespaced_deployment(cluster.ns).items]


def test_contradictions_are_reported_and_nothing_is_applied_until_fixed(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.ready_model("gemma")
    cluster.create(
        "modelservers",
        {
            "kind": "ModelServer",
            "metadata": {"name": "srv"},
            "spec": {
                "models": ["gemma"],
                "minReplicas": 1,
                # Both accepted by the schema; together they contradict each other.
                "runtime": {"kvCacheType": "q8_0", "flashAttention": False, "gpuLayers": 8},
            },
        },
    )
    cond = cluster.wait_condition("modelservers", "srv", "Ready", "False", "InvalidSpec")
    assert "spec.runtime.kvCacheType q8_0 needs flash attention" in cond["message"]
    assert "spec.runtime.gpuLayers is 8 but spec.resources.gpus is 0" in cond["message"]
    assert DEPLOYMENT not in _deployments(cluster)

    cluster.patch(
        "modelservers", "srv", {"spec": {"runtime": {"flashAttention": True, "gpuLayers": 0}}}
    )
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "True")
    deployment = wait_for(
        lambda: next(
            (
                d
                for d in cluster.apps.list_namespaced_deployment(cluster.ns).items
                if d.metadata.name == DEPLOYMENT
            ),
            None,
        ),
        what="the Deployment once the spec is consistent",
    )
    (container,) = deployment.spec.template.spec.containers
    env = {e.name: e.value for e in container.env}
    assert env["CORRAL_KV_CACHE_TYPE"] == "q8_0"
    assert env["CORRAL_FLASH_ATTENTION"] == "true"
    assert env["CORRAL_GPU_LAYERS"] == "0"

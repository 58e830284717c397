"""ModelServer reconciliation with the real operator on the real control plane."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster

DEPLOYMENT = "corral-srv"


def _server(cluster: Cluster, **spec: object) -> None:
    cluster.create(
        "modelservers",
        {"kind": "ModelServer", "metadata": {"name": "srv"}, "spec": {"models": ["gemma"], **spec}},
    )


def _deployment(cluster: Cluster) -> object:
    return wait_for(
        lambda: next(
            (
                d
                for d in cluster.apps.list_namespaced_deployment(cluster.ns).items
                if d.metadata.name == DEPLOYMENT
            ),
            None,
        ),
        what="the Deployment",
    )


@pytest.fixture
def gpu_node(cluster: Cluster) -> Iterator[str]:
    """A two-GPU node only this test's pods tolerate; removed afterwards."""
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    cluster.add_node(
        name,
        gpus=2,
        labels={"corral.dev/test-pool": cluster.ns},
        taints=[{"key": "corral.dev/test", "value": cluster.ns, "effect": "NoSchedule"}],
    )
    cluster.bind_cache_volume(f"pv-{name}")
    yield name
    cluster.core.delete_node(name)
    cluster.core.delete_persistent_volume(f"pv-{name}")


def test_waits_for_models_then_builds_restricted_runtime(
    cluster: Cluster, operator: Operator
) -> None:
    _server(cluster, minReplicas=1, maxReplicas=2, auth={"apiKeySecretRef": {"name": "keys"}})
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "False", "ModelNotFound")
    cluster.create(
        "models",
        {"kind": "Model", "metadata": {"name": "gemma"}, "spec": {"source": "gemma3:270m"}},
    )
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "False", "ModelsNotReady")
    assert not cluster.apps.list_namespaced_deployment(cluster.ns).items
    cluster.play_pull("gemma")
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "True")

    dep = _deployment(cluster)
    assert dep.spec.replicas == 1  # type: ignore[attr-defined]
    assert dep.metadata.owner_references[0].kind == "ModelServer"  # type: ignore[attr-defined]
    pod = dep.spec.template.spec  # type: ignore[attr-defined]
    assert pod.automount_service_account_token is False
    psc = pod.security_context
    assert psc.run_as_non_root is True and psc.seccomp_profile.type == "RuntimeDefault"
    (c,) = pod.containers
    assert c.args[:1] == ["serve"] and "--models" in c.args
    assert c.security_context.read_only_root_filesystem is True
    assert c.security_context.allow_privilege_escalation is False
    assert c.security_context.capabilities.drop == ["ALL"]
    mounts = {m.mount_path: m for m in c.volume_mounts}
    assert mounts["/models"].read_only is True and "/tmp" in mounts
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["models"].persistent_volume_claim.claim_name == "corral-cache-default"
    assert volumes["models"].persistent_volume_claim.read_only is True
    assert c.readiness_probe.http_get.path == "/readyz"
    assert c.liveness_probe.http_get.path == "/healthz"
    assert c.startup_probe.failure_threshold * c.startup_probe.period_seconds >= 600
    assert c.ports[0].container_port == 11434
    env = {e.name: e for e in c.env}
    assert env["CORRAL_API_KEY"].value_from.secret_key_ref.name == "keys"
    assert '"gemma3:270m"' in dep.spec.template.metadata.annotations["corral.dev/models"]  # type: ignore[attr-defined]

    svc = cluster.core.read_namespaced_service(DEPLOYMENT, cluster.ns)
    assert svc.spec.ports[0].port == 11434
    assert svc.spec.selector == dep.spec.selector.match_labels  # type: ignore[attr-defined]
    status = cluster.get("modelservers", "srv")["status"]  # type: ignore[index]
    assert status["endpoint"] == f"{DEPLOYMENT}.{cluster.ns}.svc.cluster.local:11434"
    cluster.wait_condition("modelservers", "srv", "ScaledToZero", "False")
    # No node here takes the pod (none, or the session's real node tainted against this tier's
    # pods): the server says so instead of Starting forever.
    ready = cluster.wait_condition("modelservers", "srv", "Ready", "False", "Unschedulable")
    assert "cannot be scheduled" in ready["message"]

    # The perimeter: no management in pods, a drain on removal, and a NetworkPolicy.
    assert env["CORRAL_MANAGEMENT"].value == "false"
    assert pod.termination_grace_period_seconds == 60
    assert c.lifecycle.pre_stop._exec.command == ["sleep", "5"]
    policy = client.NetworkingV1Api(cluster.core.api_client).read_namespaced_network_policy(
        DEPLOYMENT, cluster.ns
    )
    assert policy.spec.pod_selector.match_labels == dep.spec.selector.match_labels  # type: ignore[attr-defined]
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    assert [p.port for p in policy.spec.ingress[0].ports] == [11434]
    assert policy.metadata.owner_references[0].kind == "ModelServer"


def test_gpu_scheduling_binds_two_of_three(
    cluster: Cluster, operator: Operator, gpu_node: str
) -> None:
    cluster.ready_model("gemma")
    _server(
        cluster,
        minReplicas=3,
        maxReplicas=3,
        resources={"gpus": 1},
        nodeSelector={"corral.dev/test-pool": cluster.ns},
        tolerations=[
            {
                "key": "corral.dev/test",
                "operator": "Equal",
                "value": cluster.ns,
                "effect": "NoSchedule",
            }
        ],
    )
    selector = "corral.dev/modelserver=srv"

    def placed() -> tuple[int, int] | None:
        pods = cluster.job_pods(selector)
        bound = [p for p in pods if p.spec.node_name]
        pending = [
            p
            for p in pods
            if not p.spec.node_name
            and any(
                c.type == "PodScheduled" and c.status == "False"
                for c in (p.status.conditions or ())
            )
        ]
        return (len(bound), len(pending)) if len(bound) + len(pending) == 3 else None

    assert wait_for(placed, 30, "two pods bound, one Pending") == (2, 1)
    pods = cluster.job_pods(selector)
    assert {p.spec.node_name for p in pods if p.spec.node_name} == {gpu_node}
    container = pods[0].spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    keys = {t.key for t in pods[0].spec.tolerations}
    assert {"nvidia.com/gpu", "corral.dev/test"} <= keys


def test_node_selector_keeps_pods_off_other_nodes(
    cluster: Cluster, operator: Operator, gpu_node: str
) -> None:
    cluster.ready_model("gemma")
    # The node has the pool label, but the taint is not tolerated: nothing may bind.
    _server(cluster, minReplicas=1, nodeSelector={"corral.dev/test-pool": cluster.ns})
    pod = wait_for(lambda: cluster.job_pods("corral.dev/modelserver=srv"), what="a pod")[0]
    wait_for(
        lambda: any(
            c.type == "PodScheduled" and c.status == "False"
            for c in (
                cluster.core.read_namespaced_pod(pod.metadata.name, cluster.ns).status.conditions
                or ()
            )
        ),
        what="the pod to be unschedulable",
    )
    assert not cluster.core.read_namespaced_pod(pod.metadata.name, cluster.ns).spec.node_name


def test_scale_subresource_and_replica_bounds(
    cluster: Cluster, operator: Operator, kubectl: Any
) -> None:
    cluster.ready_model("gemma")
    _server(cluster, minReplicas=0, maxReplicas=2)
    cluster.wait_condition("modelservers", "srv", "ScaledToZero", "True")
    cluster.wait_condition("modelservers", "srv", "Ready", "True", "ScaledToZero")
    assert _deployment(cluster).spec.replicas == 0  # type: ignore[attr-defined]
    # The scale subresource, as an HPA or the gateway would use it.
    kubectl("scale", "modelserver/srv", "--replicas=5", "-n", cluster.ns, check=True)
    wait_for(
        lambda: cluster.apps.read_namespaced_deployment(DEPLOYMENT, cluster.ns).spec.replicas == 2,
        what="replicas clamped to maxReplicas",
    )
    cluster.wait_condition("modelservers", "srv", "ScaledToZero", "False")
    wait_for(
        lambda: (cluster.get("modelservers", "srv") or {}).get("status", {}).get("replicas") == 2,
        what="status.replicas",
    )
    scale = cluster.custom.get_namespaced_custom_object_scale(
        "corral.dev", "v1alpha1", cluster.ns, "modelservers", "srv"
    )
    assert scale["status"]["replicas"] == 2
    assert "corral.dev/modelserver=srv" in scale["status"]["selector"]

    cluster.patch("modelservers", "srv", {"spec": {"minReplicas": 3}})
    cond = cluster.wait_condition("modelservers", "srv", "Ready", "False", "InvalidSpec")
    assert "spec.minReplicas" in cond["message"]


def test_drift_is_repaired(cluster: Cluster, operator: Operator, kubectl: Any) -> None:
    cluster.ready_model("gemma")
    _server(cluster, minReplicas=1)
    _deployment(cluster)
    cluster.apps.patch_namespaced_deployment(DEPLOYMENT, cluster.ns, {"spec": {"replicas": 4}})
    wait_for(
        lambda: cluster.apps.read_namespaced_deployment(DEPLOYMENT, cluster.ns).spec.replicas == 1,
        what="replicas restored",
    )
    kubectl("delete", "service", DEPLOYMENT, "-n", cluster.ns, "--wait=false", check=True)
    wait_for(
        lambda: [
            s
            for s in cluster.core.list_namespaced_service(cluster.ns).items
            if s.metadata.name == DEPLOYMENT
        ],
        what="the Service recreated",
    )
    cluster.apps.delete_namespaced_deployment(DEPLOYMENT, cluster.ns)
    wait_for(
        lambda: [
            d
            for d in cluster.apps.list_namespaced_deployment(cluster.ns).items
            if d.metadata.name == DEPLOYMENT and not d.metadata.deletion_timestamp
        ],
        what="the Deployment recreated",
    )


def test_restart_creates_nothing_twice(cluster: Cluster, operator: Operator) -> None:
    cluster.ready_model("gemma")
    _server(cluster, minReplicas=1)
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "True")
    before = _deployment(cluster)
    jobs_before = [j.metadata.uid for j in cluster.batch.list_namespaced_job(cluster.ns).items]
    conds_before = cluster.get("modelservers", "srv")["status"]["conditions"]  # type: ignore[index]

    operator.kill()
    operator.start()
    cluster.create(
        "modelservers",
        {"kind": "ModelServer", "metadata": {"name": "late"}, "spec": {"models": ["gemma"]}},
    )
    cluster.wait_condition("modelservers", "late", "ModelsReady", "True")  # it is running again
    after = cluster.apps.read_namespaced_deployment(DEPLOYMENT, cluster.ns)
    assert after.metadata.uid == before.metadata.uid  # type: ignore[attr-defined]
    assert after.metadata.generation == before.metadata.generation  # type: ignore[attr-defined]
    assert [
        j.metadata.uid for j in cluster.batch.list_namespaced_job(cluster.ns).items
    ] == jobs_before
    assert len(cluster.apps.list_namespaced_deployment(cluster.ns).items) == 2
    assert len(cluster.core.list_namespaced_service(cluster.ns).items) == 2
    conds_after = cluster.get("modelservers", "srv")["status"]["conditions"]  # type: ignore[index]
    assert [c["lastTransitionTime"] for c in conds_after] == [
        c["lastTransitionTime"] for c in conds_before
    ]


def test_delete_cascades_to_children(cluster: Cluster, operator: Operator) -> None:
    cluster.ready_model("gemma")
    _server(cluster, minReplicas=1)
    _deployment(cluster)
    cluster.delete("modelservers", "srv")
    wait_for(
        lambda: (
            not cluster.apps.list_namespaced_deployment(cluster.ns).items
            and not cluster.core.list_namespaced_service(cluster.ns).items
        ),
        30,
        "the Deployment and Service garbage-collected",
    )

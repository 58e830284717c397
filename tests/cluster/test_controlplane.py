"""The control plane the cluster tier relies on is real: schemas, scheduling, controllers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.corral.dev"},
    "spec": {
        "group": "smoke.corral.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def test_version_and_kubectl(kubectl: Callable[..., Any]) -> None:
    out = kubectl("version", "-o", "json", check=True)
    server = json.loads(out.stdout)["serverVersion"]
    assert (server["major"], server["minor"]) == ("1", "20")


def test_crd_schema_validation(k8s_client: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(k8s_client)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise
    custom = client.CustomObjectsApi(k8s_client)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("widgets.smoke.corral.dev")
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(established)

    def create(size: int) -> Any:
        return custom.create_namespaced_custom_object(
            "smoke.corral.dev",
            "v1",
            namespace,
            "widgets",
            {
                "apiVersion": "smoke.corral.dev/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{size}"},
                "spec": {"size": size},
            },
        )

    # A freshly established CRD may take a moment before its endpoint serves.
    wait_for(lambda: _try(lambda: create(3)))
    with pytest.raises(ApiException) as rejected:
        create(0)
    assert rejected.value.status == 422
    assert "spec.size" in rejected.value.body


def _try(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except ApiException as exc:
        if exc.status in (404, 503):
            return False
        raise
    return True


def _gpu_node(name: str, gpus: int) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(name=name, labels={"kubernetes.io/hostname": name}),
        status=client.V1NodeStatus(
            capacity={"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
            allocatable={"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
        ),
    )


def _mark_ready(core: client.CoreV1Api, name: str) -> None:
    now = datetime.now(UTC).isoformat()
    core.patch_node_status(
        name,
        {
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"},
                "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "test node",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            }
        },
    )


def test_gpu_scheduling_binds_two_of_three(k8s_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(k8s_client)
    node = f"gpu-{namespace}"
    core.create_node(_gpu_node(node, 2))
    _mark_ready(core, node)
    try:
        for i in range(3):
            core.create_namespaced_pod(
                namespace,
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name=f"gpu-{i}"),
                    spec=client.V1PodSpec(
                        node_selector={"kubernetes.io/hostname": node},
                        containers=[
                            client.V1Container(
                                name="main",
                                image="corral-test/idle:1",
                                resources=client.V1ResourceRequirements(
                                    limits={"nvidia.com/gpu": "1"}
                                ),
                            )
                        ],
                    ),
                ),
            )

        def bound() -> list[str]:
            pods = core.list_namespaced_pod(namespace).items
            return [p.metadata.name for p in pods if p.spec.node_name == node]

        wait_for(lambda: len(bound()) >= 2)

        # The third pod must stay Pending with the scheduler saying why.
        def unschedulable() -> bool:
            pods = core.list_namespaced_pod(namespace).items
            pending = [p for p in pods if not p.spec.node_name]
            return len(pending) == 1 and any(
                c.type == "PodScheduled"
                and c.status == "False"
                and "nvidia.com/gpu" in (c.message or "")
                for c in pending[0].status.conditions or []
            )

        wait_for(unschedulable)
        assert len(bound()) == 2
    finally:
        core.delete_node(node)


def test_deployment_creates_pods(k8s_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(k8s_client)
    core = client.CoreV1Api(k8s_client)
    labels = {"app": "smoke"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="smoke"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="main", image="corral-test/idle:1")]
                    ),
                ),
            ),
        ),
    )
    wait_for(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=smoke").items) == 2
    )

"""Pure builders of the Node object, its status heartbeat and its Lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .status import timestamp

KUBELET_VERSION = "v1.20.2"
LEASE_SECONDS = 40
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeShape:
    name: str
    address: str
    pod_cidr: str
    cpu: str = "4"
    memory: str = "16Gi"
    pods: int = 60
    gpus: int = 0
    gpu_resource: str = GPU_RESOURCE
    kubelet_port: int = 0  # the node's log endpoint (see kubelet), 0 for none

    def capacity(self) -> dict[str, str]:
        out = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        if self.gpus:
            out[self.gpu_resource] = str(self.gpus)
        return out


def node_manifest(shape: NodeShape, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "labels": {
                "kubernetes.io/hostname": shape.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "corral.dev/node-agent": "true",
                **labels,
            },
        },
        "spec": {"podCIDR": shape.pod_cidr, "podCIDRs": [shape.pod_cidr]},
    }


def node_status(shape: NodeShape, now: datetime, ready_since: datetime) -> dict[str, Any]:
    """The status patch sent on every heartbeat: Ready, no pressure, capacity and addresses."""
    beat, since = timestamp(now), timestamp(ready_since)

    def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": beat,
            "lastTransitionTime": since,
        }

    capacity = shape.capacity()
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", False, "KubeletHasSufficientMemory", "node agent"),
            condition("DiskPressure", False, "KubeletHasNoDiskPressure", "node agent"),
            condition("PIDPressure", False, "KubeletHasSufficientPID", "node agent"),
            condition("Ready", True, "KubeletReady", "corral node agent is posting ready status"),
        ],
        # No Hostname address: the API server reaches a kubelet (pods/log) at the first address
        # of its --kubelet-preferred-address-types, Hostname first by default, and a node's name
        # resolves nowhere here.
        "addresses": [{"type": "InternalIP", "address": shape.address}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": shape.kubelet_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": "",
            "osImage": "corral node agent",
            "containerRuntimeVersion": "corral-nodeagent://1",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_manifest(node: str, node_uid: str, now: datetime) -> dict[str, Any]:
    """The node's Lease in kube-node-lease, owned by the Node so it goes when the Node goes."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": "kube-node-lease",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(now),
        },
    }

"""Objects as the API server would hand them to the operator."""

from __future__ import annotations

from typing import Any

GEMMA_STATUS = {
    "name": "gemma3:270m",
    "digest": "sha256:" + "ab" * 32,
    "pullSpecHash": "x",
    "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
}


def model(name: str = "gemma", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"source": "gemma3:270m", "cache": "default", **spec},
        "status": status or {},
    }


def server(name: str = "srv", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-srv", "generation": 2},
        "spec": {
            "models": ["gemma"],
            "minReplicas": 0,
            "maxReplicas": 1,
            "keepAliveSeconds": 300,
            "resources": {"gpus": 0, "gpuResourceName": "nvidia.com/gpu"},
            "runtime": {},
            **spec,
        },
        "status": status or {},
    }

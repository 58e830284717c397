"""The Model and ModelServer ``corral deploy`` applies, built purely from its arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral_operator import api
from corral_operator.cli.naming import resource_name
from corral_operator.sources import parse_source


@dataclass(frozen=True, slots=True)
class DeployRequest:
    model: str
    """As typed: ``gemma3:270m``, ``ollama://…``, ``hf://…``, ``https://…``, ``pvc://…``."""
    gpus: int = 0
    min_replicas: int = 0
    max_replicas: int = 1
    keep_alive_seconds: int = 300
    max_keep_alive_seconds: int = 3600
    """How long a request's keep_alive may keep the server up; -1: no bound."""
    cpu: str | None = None
    memory: str | None = None

    def problems(self) -> list[str]:
        found = []
        if self.min_replicas > self.max_replicas:
            found.append(f"--min ({self.min_replicas}) is greater than --max ({self.max_replicas})")
        if self.max_replicas < 1:
            found.append("--max must be at least 1")
        if self.min_replicas < 0 or self.gpus < 0 or self.keep_alive_seconds < 0:
            found.append("--min, --gpus and --keep-alive cannot be negative")
        return found


def model_object(request: DeployRequest, namespace: str) -> dict[str, Any]:
    """Every field is stated, so that re-running deploy with other flags converges on them."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Model",
        "metadata": {"name": resource_name(request.model), "namespace": namespace},
        "spec": {"source": parse_source(request.model).uri},
    }


def server_object(request: DeployRequest, namespace: str) -> dict[str, Any]:
    name = resource_name(request.model)
    resources: dict[str, Any] = {"gpus": request.gpus}
    if request.cpu is not None:
        resources["cpu"] = request.cpu
    if request.memory is not None:
        resources["memory"] = request.memory
    return {
        "apiVersion": api.API_VERSION,
        "kind": "ModelServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "models": [name],
            "minReplicas": request.min_replicas,
            "maxReplicas": request.max_replicas,
            "keepAliveSeconds": request.keep_alive_seconds,
            "maxKeepAliveSeconds": request.max_keep_alive_seconds,
            "resources": resources,
        },
    }

"""The runtime Deployment, Service and NetworkPolicy of a ModelServer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral_operator import api
from corral_operator.builders.common import (
    base_labels,
    cache_volume,
    container_security_context,
    owner_reference,
    pod_security_context,
    tmp_volume,
)
from corral_operator.builders.memory import memory_budget
from corral_operator.settings import OperatorSettings

# Startup and readiness are probed every second: a pod woken from zero holds requests at the
# gateway until it is Ready, so each second of probe period is a second of cold-start latency.
# The probes are cheap (/healthz and /readyz answer from the event loop, never from llama.cpp).
PROBE_PERIOD_SECONDS = 1

# Pod removal: the preStop sleep keeps the pod serving while the Endpoints (and the gateway,
# which watches them) drop it; then SIGTERM, and the runtime lets requests in flight finish
# within what is left of the grace, less a margin for unloading models and exiting.
DEFAULT_TERMINATION_GRACE_SECONDS = 60
PRE_STOP_SECONDS = 5
EXIT_MARGIN_SECONDS = 5


def shutdown_budget(grace_seconds: int) -> tuple[int, int]:
    """(preStop sleep, the runtime's graceful shutdown) within a pod's termination grace."""
    pre_stop = min(PRE_STOP_SECONDS, max(1, grace_seconds // 4))
    return pre_stop, max(1, grace_seconds - pre_stop - EXIT_MARGIN_SECONDS)


def termination_grace(spec: Mapping[str, Any]) -> int:
    return int(spec.get("terminationGracePeriodSeconds") or DEFAULT_TERMINATION_GRACE_SECONDS)


def service_hosts(server_name: str, namespace: str) -> list[str]:
    """The names a client in the cluster reaches the runtime Service by (its Host header)."""
    service = api.server_child_name(server_name)
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A Ready Model as the runtime sees it: its Model object, served name and digest."""

    model: str
    name: str
    digest: str | None

    def as_status(self) -> dict[str, Any]:
        entry = {"model": self.model, "name": self.name}
        if self.digest:
            entry["digest"] = self.digest
        return entry


def selector_labels(server_name: str) -> dict[str, str]:
    return {api.LABEL_NAME: api.RUNTIME_APP, api.LABEL_MODELSERVER: server_name}


def runtime_labels(server_name: str) -> dict[str, str]:
    return {
        **base_labels("runtime"),
        **selector_labels(server_name),
        api.LABEL_INSTANCE: server_name,
    }


def child_metadata(server: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of each object made for a ModelServer: its name, labels and owner."""
    meta = server["metadata"]
    return {
        "name": api.server_child_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": runtime_labels(meta["name"]),
        "ownerReferences": [owner_reference(server)],
    }


@dataclass(frozen=True, slots=True)
class PodSizing:
    """What a server's models ask of each pod where its spec says nothing (planners/sizing.py):
    a memory limit, a GPU count, the least memory a node's GPUs must have (MiB, the GPU feature
    discovery label's unit), and llama.cpp's tensor split over the pod's GPUs with the layers
    to offload across them (every layer: the runtime plans an offload against one GPU)."""

    memory: str | None = None
    gpus: int | None = None
    min_gpu_memory_mib: int | None = None
    tensor_split: tuple[int, ...] = ()
    gpu_layers: int | None = None


NO_SIZING = PodSizing()
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


def _quantity(value: object) -> str:
    return str(value)


def _memory_limit(
    spec: Mapping[str, Any], settings: OperatorSettings, sizing: PodSizing = NO_SIZING
) -> str:
    wanted = spec.get("resources") or {}
    return _quantity(wanted.get("memory", sizing.memory or settings.default_resources.memory))


def pod_gpus(spec: Mapping[str, Any], sizing: PodSizing = NO_SIZING) -> int:
    """GPUs per pod: the spec's, else the sizing's, else none."""
    wanted = (spec.get("resources") or {}).get("gpus")
    return int(wanted if wanted is not None else sizing.gpus or 0)


def _resources(
    spec: Mapping[str, Any], settings: OperatorSettings, sizing: PodSizing = NO_SIZING
) -> dict[str, Any]:
    wanted = spec.get("resources") or {}
    cpu = _quantity(wanted.get("cpu", settings.default_resources.cpu))
    memory = _memory_limit(spec, settings, sizing)
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    gpus = pod_gpus(spec, sizing)
    if gpus > 0:
        resource = str(wanted.get("gpuResourceName") or "nvidia.com/gpu")
        requests[resource] = str(gpus)
        limits[resource] = str(gpus)
    return {"requests": requests, "limits": limits}


# spec.runtime fields and the runtime settings (CORRAL_* variables) they become.
RUNTIME_SETTINGS_ENV = {
    "contextLength": "CORRAL_CONTEXT_LENGTH",
    "parallel": "CORRAL_PARALLEL",
    "gpuLayers": "CORRAL_GPU_LAYERS",
    "flashAttention": "CORRAL_FLASH_ATTENTION",
    "kvCacheType": "CORRAL_KV_CACHE_TYPE",
}


def memory_env(
    spec: Mapping[str, Any], settings: OperatorSettings, sizing: PodSizing = NO_SIZING
) -> list[dict[str, str]]:
    """What decides how many models a pod keeps loaded: memory, not a count. The count limit is
    raised to the number of models served (the runtime's default of 3 would otherwise evict
    before memory runs short), and the budget is the one the memory limit allows."""
    env = [
        {"name": "CORRAL_MAX_LOADED_MODELS", "value": str(max(1, len(spec.get("models") or ())))}
    ]
    budget = memory_budget(_memory_limit(spec, settings, sizing))
    if budget is not None:
        env.append({"name": "CORRAL_MEMORY_BUDGET_BYTES", "value": str(budget)})
    return env


# spec.priority fields and the runtime settings they become.
PRIORITY_SETTINGS_ENV = {
    "agingSeconds": "CORRAL_PRIORITY_AGING_SECONDS",
    "reservedSlots": "CORRAL_PRIORITY_RESERVED_SLOTS",
}


def priority_env(spec: Mapping[str, Any]) -> list[dict[str, str]]:
    """``spec.priority``'s part that the runtime applies (its wait for a slot): the share caps,
    the aging and the reserved slots. The API keys' classes and the default class are the
    gateway's (it sets every request's X-Corral-Priority)."""
    priority = spec.get("priority") or {}
    env = []
    if priority.get("shares"):
        shares = json.dumps(dict(priority["shares"]), sort_keys=True)
        env.append({"name": "CORRAL_PRIORITY_SHARES", "value": shares})
    for field_name, variable in PRIORITY_SETTINGS_ENV.items():
        if priority.get(field_name) is not None:
            env.append({"name": variable, "value": str(priority[field_name])})
    return env


def tensor_split_env(spec: Mapping[str, Any], sizing: PodSizing) -> list[dict[str, str]]:
    """The layers' split across a pod's GPUs, in proportions (llama.cpp's tensor_split), when
    the pod has the GPUs the split was made for; and, unless the spec says how many, every
    layer offloaded: the runtime plans an offload against its largest GPU alone, which would
    keep on the CPU the layers the split puts on the others."""
    if not sizing.tensor_split or pod_gpus(spec, sizing) != len(sizing.tensor_split):
        return []
    split = ",".join(str(share) for share in sizing.tensor_split)
    env = [{"name": "CORRAL_TENSOR_SPLIT", "value": split}]
    if sizing.gpu_layers is not None and (spec.get("runtime") or {}).get("gpuLayers") is None:
        env.append({"name": "CORRAL_GPU_LAYERS", "value": str(sizing.gpu_layers)})
    return env


def preload_env(models: Sequence[ServedModel]) -> list[dict[str, str]]:
    """The model a pod loads as it starts: the server's first. A pod is started for a request
    (a wake-up from zero, a scale-up on load), so its model is wanted at once; loading it
    beside the runtime's own start-up takes that time off the first request. One model only:
    a server whose models do not all fit its memory would evict one for another."""
    return [{"name": "CORRAL_PRELOAD", "value": models[0].name}] if models else []


def _env(
    server: Mapping[str, Any],
    settings: OperatorSettings,
    sizing: PodSizing = NO_SIZING,
    models: Sequence[ServedModel] = (),
) -> list[dict[str, Any]]:
    meta, spec = server["metadata"], server["spec"]
    runtime = spec.get("runtime") or {}
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        # Scale-to-zero is the operator's job; inside a pod, loaded models stay loaded (-1 is
        # forever, as a request's keep_alive -1; the gateway maps requests' keep_alive onto
        # the ModelServer's replicas).
        {"name": "CORRAL_KEEP_ALIVE_SECONDS", "value": "-1"},
        # What the cache holds is the operator's job too (Models and pull Jobs): no client of
        # a pod may create, pull, copy or delete models.
        {"name": "CORRAL_MANAGEMENT", "value": "false"},
        # Against DNS rebinding the runtime serves only names it knows: the Service's (pod
        # IPs, as the kubelet and the gateway use, are always served).
        {
            "name": "CORRAL_ALLOWED_HOSTS",
            "value": ",".join(service_hosts(meta["name"], meta["namespace"])),
        },
        {
            "name": "CORRAL_GRACEFUL_SHUTDOWN_SECONDS",
            "value": str(shutdown_budget(termination_grace(spec))[1]),
        },
        *memory_env(spec, settings, sizing),
        *tensor_split_env(spec, sizing),
        *priority_env(spec),
        *preload_env(models),
    ]
    for field_name, variable in RUNTIME_SETTINGS_ENV.items():
        value = runtime.get(field_name)
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env.append({"name": variable, "value": text})
    secret = ((spec.get("auth") or {}).get("apiKeySecretRef")) or None
    if secret:
        env.append(
            {
                "name": "CORRAL_API_KEY",
                "valueFrom": {
                    "secretKeyRef": {"name": secret["name"], "key": secret.get("key", "api-key")}
                },
            }
        )
    # The user's env comes last so that it can override any of the above.
    env += [dict(item) for item in runtime.get("env") or ()]
    return env


def _probes(startup_seconds: int) -> dict[str, Any]:
    def http(path: str) -> dict[str, Any]:
        return {"path": path, "port": "http"}

    return {
        # Loading a large model can take minutes: the startup probe allows that much time
        # before the liveness probe starts counting.
        "startupProbe": {
            "httpGet": http("/healthz"),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
            "failureThreshold": max(1, math.ceil(startup_seconds / PROBE_PERIOD_SECONDS)),
        },
        "readinessProbe": {
            "httpGet": http("/readyz"),
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": http("/healthz"),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def build_deployment(
    server: Mapping[str, Any],
    *,
    replicas: int,
    claim: str,
    models: Sequence[ServedModel],
    settings: OperatorSettings,
    sizing: PodSizing = NO_SIZING,
) -> dict[str, Any]:
    """The runtime Deployment: restricted pods with the cache PVC mounted read-only, sized by
    ``sizing`` where the spec does not say."""
    meta, spec = server["metadata"], server["spec"]
    name = meta["name"]
    runtime = spec.get("runtime") or {}
    gpus = pod_gpus(spec, sizing)
    grace = termination_grace(spec)
    tolerations = [
        *(settings.gpu_tolerations if gpus > 0 else ()),
        *(spec.get("tolerations") or ()),
    ]
    container: dict[str, Any] = {
        "name": "runtime",
        "image": runtime.get("image") or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["corral"],
        "args": [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(api.RUNTIME_PORT),
            "--models",
            api.MODELS_MOUNT,
            *(runtime.get("extraArgs") or ()),
        ],
        "env": _env(server, settings, sizing, models),
        "ports": [{"name": "http", "containerPort": api.RUNTIME_PORT, "protocol": "TCP"}],
        "resources": _resources(spec, settings, sizing),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": api.MODELS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        **_probes(int(runtime.get("startupSeconds") or settings.startup_seconds)),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(shutdown_budget(grace)[0])]}}},
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [cache_volume(claim, read_only=True), tmp_volume()],
        "terminationGracePeriodSeconds": grace,
    }
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    affinity = gpu_memory_affinity(spec.get("affinity"), sizing.min_gpu_memory_mib)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.get("runtimeClassName"):
        pod_spec["runtimeClassName"] = spec["runtimeClassName"]
    # A GPU cannot be shared with a surge pod, so GPU servers replace pods one at a time.
    strategy: dict[str, Any] = {"type": "RollingUpdate"}
    if gpus > 0:
        strategy["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    labels = runtime_labels(name)
    # The served models (with digests) in the pod template: a re-pulled model rolls the pods.
    models_annotation = json.dumps([m.as_status() for m in models], separators=(",", ":"))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(server),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {api.ANNOTATION_MODELS: models_annotation},
                },
                "spec": pod_spec,
            },
        },
    }


def gpu_memory_affinity(
    affinity: Mapping[str, Any] | None, min_gpu_memory_mib: int | None
) -> dict[str, Any] | None:
    """The spec's affinity, with every required node selector term also asking for GPUs of at
    least ``min_gpu_memory_mib`` MiB (a ``Gt`` on the label one below it); a new term when the
    spec has none."""
    if min_gpu_memory_mib is None:
        return dict(affinity) if affinity else None
    wanted = {
        "key": GPU_MEMORY_LABEL,
        "operator": "Gt",
        "values": [str(min_gpu_memory_mib - 1)],
    }
    result: dict[str, Any] = json.loads(json.dumps(affinity or {}))
    required = result.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {}
    )
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).append(wanted)
    return result


def build_service(server: Mapping[str, Any]) -> dict[str, Any]:
    """A ClusterIP Service in front of the runtime pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(server),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(server["metadata"]["name"]),
            "ports": [
                {"name": "http", "port": api.RUNTIME_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_network_policy(server: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """The runtime pods' NetworkPolicy: ingress from the gateway pods (and the configured extra
    peers) on the runtime port only; egress to DNS only, since pods never pull (Jobs do)."""
    gateway: dict[str, Any] = {"podSelector": {"matchLabels": dict(settings.gateway_pod_labels)}}
    if settings.gateway_namespace:
        gateway["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": settings.gateway_namespace}
        }
    dns = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(server),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(server["metadata"]["name"])},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [gateway, *(dict(peer) for peer in settings.runtime_ingress_from)],
                    "ports": [{"port": api.RUNTIME_PORT, "protocol": "TCP"}],
                }
            ],
            "egress": [{"ports": dns}],
        },
    }


def service_endpoint(server_name: str, namespace: str) -> str:
    """The Service's cluster DNS name and port."""
    return f"{api.server_child_name(server_name)}.{namespace}.svc.cluster.local:{api.RUNTIME_PORT}"

"""What a ModelServer needs: its Models Ready, then a Deployment, a Service and a NetworkPolicy,
and its status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral_operator import api
from corral_operator.builders.runtime import (
    RUNTIME_SETTINGS_ENV,
    ServedModel,
    build_deployment,
    build_network_policy,
    build_service,
    selector_labels,
    service_endpoint,
)
from corral_operator.planners.model import model_cache
from corral_operator.planners.replicas import server_replicas
from corral_operator.planners.sizing import DOES_NOT_FIT, size_server
from corral_operator.settings import OperatorSettings
from corral_operator.status.conditions import Condition, is_true
from corral_operator.status.pods import pods_trouble

READY = "Ready"
MODELS_READY = "ModelsReady"
SCALED_TO_ZERO = "ScaledToZero"


@dataclass(frozen=True)
class ServerPlan:
    """Children to apply (none while the server cannot run) and the status to report."""

    children: tuple[dict[str, Any], ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()


def spec_problems(spec: Mapping[str, Any], settings: OperatorSettings) -> list[str]:
    """Cross-field rules the CRD schema cannot express on Kubernetes 1.20 (no CEL): settings
    that contradict each other, so that one of them would silently not happen."""
    problems = []
    low, high = int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", 1))
    if low > high:
        problems.append(f"spec.minReplicas ({low}) is greater than spec.maxReplicas ({high})")
    models = list(spec.get("models") or ())
    if len(set(models)) != len(models):
        problems.append("spec.models lists a Model more than once")
    return problems + _runtime_problems(spec)


def _runtime_problems(spec: Mapping[str, Any]) -> list[str]:
    runtime = spec.get("runtime") or {}
    problems = []
    kv_cache = runtime.get("kvCacheType")
    if kv_cache not in (None, "f16") and runtime.get("flashAttention") is False:
        problems.append(
            f"spec.runtime.kvCacheType {kv_cache} needs flash attention (llama.cpp cannot "
            "quantize the V cache without it), but spec.runtime.flashAttention is false"
        )
    gpus = int((spec.get("resources") or {}).get("gpus", 0))
    layers = str(runtime.get("gpuLayers", "auto"))
    if gpus == 0 and layers not in ("auto", "0"):
        problems.append(
            f"spec.runtime.gpuLayers is {layers} but spec.resources.gpus is 0: "
            "there is no GPU to offload layers to"
        )
    if gpus > 0 and layers == "0":
        problems.append(
            f"spec.resources.gpus is {gpus} but spec.runtime.gpuLayers is 0: "
            "every layer would stay on the CPU"
        )
    overridden = {str(item.get("name")) for item in runtime.get("env") or ()}
    for field_name, variable in RUNTIME_SETTINGS_ENV.items():
        if runtime.get(field_name) is not None and variable in overridden:
            problems.append(
                f"spec.runtime.{field_name} and spec.runtime.env {variable} both set it"
            )
    return problems


def _waiting(reason: str, message: str, replicas: int) -> tuple[Condition, ...]:
    return (
        Condition(MODELS_READY, "False", reason, message),
        Condition(READY, "False", reason, message),
        Condition(
            SCALED_TO_ZERO,
            "True" if replicas == 0 else "False",
            "NoReplicas" if replicas == 0 else "Running",
            "",
        ),
    )


def plan_modelserver(
    server: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any] | None],
    deployment: Mapping[str, Any] | None,
    settings: OperatorSettings,
    now: datetime,
    pods: Iterable[Mapping[str, Any]] = (),
    nodes: Iterable[Mapping[str, Any]] = (),
) -> ServerPlan:
    """Decide the children and status of ``server``.

    ``models`` maps each name in ``spec.models`` to its Model (None when it does not exist);
    ``deployment`` is the runtime Deployment as it is now, if any; ``pods`` its runtime pods
    (while none is ready, what keeps them from it is the Ready condition's reason); ``nodes``
    the cluster's nodes, whose GPUs the pods are sized for (planners/sizing.py).
    """
    meta, spec = server["metadata"], server["spec"]
    name, namespace = meta["name"], meta["namespace"]
    dep_status = (deployment or {}).get("status") or {}
    current = int(dep_status.get("replicas") or 0)
    observed: dict[str, Any] = {
        "replicas": current,
        "readyReplicas": int(dep_status.get("readyReplicas") or 0),
        "selector": ",".join(f"{k}={v}" for k, v in selector_labels(name).items()),
        "endpoint": service_endpoint(name, namespace),
    }

    problems = spec_problems(spec, settings)
    caches = {model_cache(m) for m in models.values() if m is not None}
    if len(caches) > 1:
        problems.append(f"spec.models use different cache profiles ({', '.join(sorted(caches))})")
    unknown = sorted(c for c in caches if c not in settings.cache_profiles)
    if unknown:
        problems.append(f"no cache profile {', '.join(unknown)} is configured")
    if problems:
        message = "; ".join(problems)
        return ServerPlan(
            status=observed,
            conditions=(
                Condition(READY, "False", "InvalidSpec", message),
                Condition(
                    SCALED_TO_ZERO,
                    "True" if current == 0 else "False",
                    "NoReplicas" if current == 0 else "Running",
                    "",
                ),
            ),
        )

    missing = [m for m, obj in models.items() if obj is None]
    if missing:
        return ServerPlan(
            status=observed,
            conditions=_waiting(
                "ModelNotFound", f"no Model named {', '.join(missing)} in {namespace}", current
            ),
        )
    unready = [
        m
        for m, obj in models.items()
        if obj is not None and not is_true((obj.get("status") or {}).get("conditions"), READY)
    ]
    if unready:
        return ServerPlan(
            status=observed,
            conditions=_waiting(
                "ModelsNotReady", f"waiting for Model {', '.join(unready)} to be Ready", current
            ),
        )

    served = [
        ServedModel(
            model=m,
            name=str((obj.get("status") or {}).get("name") or m),
            digest=(obj.get("status") or {}).get("digest"),
        )
        for m, obj in models.items()
        if obj is not None
    ]
    cache = caches.pop()
    placement = size_server(spec, models, nodes, settings.default_resources.memory)
    if placement is not None:
        observed["sizing"] = placement.status
    if placement is not None and placement.problem:
        return ServerPlan(
            status=observed,
            conditions=(
                Condition(MODELS_READY, "True", "ModelsReady", ", ".join(m.name for m in served)),
                Condition(READY, "False", DOES_NOT_FIT, placement.problem),
                Condition(
                    SCALED_TO_ZERO,
                    "True" if current == 0 else "False",
                    "NoReplicas" if current == 0 else "Running",
                    "",
                ),
            ),
        )
    # The keep-alive timer's decision too: a resync never undoes a request's keep_alive.
    decision = server_replicas(server, now)
    deployment_obj = build_deployment(
        server,
        replicas=decision.replicas,
        claim=api.cache_pvc_name(cache),
        models=served,
        settings=settings,
        **({"sizing": placement.sizing} if placement is not None else {}),
    )
    ready = int(observed["readyReplicas"])
    if decision.replicas == 0:
        ready_cond = Condition(
            READY, "True", "ScaledToZero", "no replicas; the next request scales the server up"
        )
    elif ready > 0:
        ready_cond = Condition(
            READY, "True", "Available", f"{ready}/{decision.replicas} replicas ready"
        )
    elif trouble := pods_trouble(pods):
        ready_cond = Condition(READY, "False", trouble.reason, trouble.message)
    else:
        ready_cond = Condition(READY, "False", "Starting", f"0/{decision.replicas} replicas ready")
    zero = (
        Condition(SCALED_TO_ZERO, "True", decision.reason, "")
        if decision.replicas == 0
        else Condition(SCALED_TO_ZERO, "False", "Running", "")
    )
    return ServerPlan(
        children=(
            deployment_obj,
            build_service(server),
            *([build_network_policy(server, settings)] if settings.runtime_network_policy else []),
        ),
        status={**observed, "models": [m.as_status() for m in served]},
        conditions=(
            Condition(MODELS_READY, "True", "ModelsReady", ", ".join(m.name for m in served)),
            ready_cond,
            zero,
        ),
    )

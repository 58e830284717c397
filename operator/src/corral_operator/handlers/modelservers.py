"""ModelServer handlers: the runtime Deployment and Service, and the server's status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from corral_operator import api
from corral_operator.handlers.apply import Logger, apply_plan
from corral_operator.handlers.context import Context
from corral_operator.handlers.events import post_events
from corral_operator.planners.events import server_events
from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.status.patch import write_status


def reconcile_modelserver(ctx: Context, namespace: str, name: str, logger: Logger) -> None:
    """Converge one ModelServer: apply its children when its Models are Ready; report status,
    and post the Events of what changed."""
    ctx.one_at_a_time(
        "ModelServer", namespace, name, lambda: _reconcile_modelserver(ctx, namespace, name, logger)
    )


def deployment_replicas(deployment: Mapping[str, Any] | None) -> int:
    """The replicas a runtime Deployment asks for (0 when there is none)."""
    return int(((deployment or {}).get("spec") or {}).get("replicas") or 0)


def _reconcile_modelserver(ctx: Context, namespace: str, name: str, logger: Logger) -> bool:
    """``reconcile_modelserver`` under the server's lock; False once the server is gone."""
    kube = ctx.kube
    server = kube.get("ModelServer", namespace, name)
    if server is None:
        ctx.forget(namespace, api.server_child_name(name))
        return False
    if server["metadata"].get("deletionTimestamp"):
        return True
    wanted = list(dict.fromkeys(server["spec"].get("models") or ()))
    models = {m: kube.get("Model", namespace, m) for m in wanted}
    deployment = kube.get("Deployment", namespace, api.server_child_name(name))
    pods = kube.list("Pod", namespace, selector=f"{api.LABEL_MODELSERVER}={name}")
    now = datetime.now(UTC)
    nodes = kube.list_nodes() or ()
    plan = plan_modelserver(server, models, deployment, ctx.settings, now, pods, nodes)
    apply_plan(ctx, plan.children, (), logger)
    write_status(kube, server, plan.status, plan.conditions)
    wanted_deployment = next((c for c in plan.children if c["kind"] == "Deployment"), None)
    replicas = (
        (deployment_replicas(deployment), deployment_replicas(wanted_deployment))
        if wanted_deployment is not None
        else None
    )
    post_events(ctx, server, server_events(server, replicas, plan.conditions, now))
    return True


def servers_using(ctx: Context, namespace: str, model: str) -> list[str]:
    """Names of the ModelServers in ``namespace`` that serve ``model``."""
    return [
        s["metadata"]["name"]
        for s in ctx.kube.list("ModelServer", namespace)
        if model in (s.get("spec") or {}).get("models", ())
    ]


def server_of(labels: Mapping[str, Any]) -> str | None:
    value = labels.get(api.LABEL_MODELSERVER)
    return str(value) if value else None

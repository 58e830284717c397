"""ModelServer handlers: the runtime Deployment and Service, and the server's status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from corral_operator import api
from corral_operator.handlers.apply import Logger, apply_plan
from corral_operator.handlers.context import Context
from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.status.patch import write_status


def reconcile_modelserver(ctx: Context, namespace: str, name: str, logger: Logger) -> None:
    """Converge one ModelServer: apply its children when its Models are Ready; report status."""
    kube = ctx.kube
    server = kube.get("ModelServer", namespace, name)
    if server is None:
        ctx.forget(namespace, api.server_child_name(name))
        return
    if server["metadata"].get("deletionTimestamp"):
        return
    wanted = list(dict.fromkeys(server["spec"].get("models") or ()))
    models = {m: kube.get("Model", namespace, m) for m in wanted}
    deployment = kube.get("Deployment", namespace, api.server_child_name(name))
    pods = kube.list("Pod", namespace, selector=f"{api.LABEL_MODELSERVER}={name}")
    plan = plan_modelserver(server, models, deployment, ctx.settings, datetime.now(UTC), pods)
    apply_plan(ctx, plan.children, (), logger)
    write_status(kube, server, plan.status, plan.conditions)


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

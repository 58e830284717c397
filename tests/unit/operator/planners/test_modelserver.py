from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.settings import OperatorSettings
from tests.unit.operator.factories import GEMMA_STATUS, model, server

pytestmark = pytest.mark.unit
NOW = datetime(2024, 1, 1, tzinfo=UTC)
READY = model(status=dict(GEMMA_STATUS))


def _plan(srv: dict[str, Any], models: dict[str, Any], deployment: Any = None) -> Any:
    return plan_modelserver(srv, models, deployment, OperatorSettings(), NOW)


def _reasons(plan: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.conditions}


def test_waits_for_missing_and_unready_models() -> None:
    missing = _plan(server(), {"gemma": None})
    assert not missing.children
    assert _reasons(missing)["ModelsReady"] == ("False", "ModelNotFound")
    unready = _plan(server(), {"gemma": model()})
    assert _reasons(unready)["Ready"] == ("False", "ModelsNotReady")


def test_ready_models_give_children_and_status() -> None:
    plan = _plan(
        server(minReplicas=1), {"gemma": READY}, {"status": {"replicas": 1, "readyReplicas": 1}}
    )
    kinds = [c["kind"] for c in plan.children]
    assert kinds == ["Deployment", "Service", "NetworkPolicy"]
    assert plan.children[0]["spec"]["replicas"] == 1
    assert _reasons(plan) == {
        "ModelsReady": ("True", "ModelsReady"),
        "Ready": ("True", "Available"),
        "ScaledToZero": ("False", "Running"),
    }
    assert plan.status["models"] == [
        {"model": "gemma", "name": "gemma3:270m", "digest": GEMMA_STATUS["digest"]}
    ]
    assert plan.status["endpoint"] == "corral-srv.ns.svc.cluster.local:11434"


def test_zero_replicas_is_scaled_to_zero() -> None:
    plan = _plan(server(), {"gemma": READY})
    assert plan.children[0]["spec"]["replicas"] == 0
    assert _reasons(plan)["ScaledToZero"] == ("True", "MinReplicas")
    assert _reasons(plan)["Ready"] == ("True", "ScaledToZero")


def test_min_above_max_is_an_invalid_spec() -> None:
    plan = _plan(server(minReplicas=3, maxReplicas=1), {"gemma": READY})
    assert not plan.children
    assert _reasons(plan)["Ready"] == ("False", "InvalidSpec")
    assert "spec.minReplicas" in plan.conditions[0].message


def test_models_in_different_caches_are_an_invalid_spec() -> None:
    fast = model("other", status=dict(GEMMA_STATUS), cache="fast")
    plan = _plan(server(models=["gemma", "other"]), {"gemma": READY, "other": fast})
    assert _reasons(plan)["Ready"] == ("False", "InvalidSpec")


def test_keep_alive_expiry_scales_to_min() -> None:
    srv = server(replicas=1, maxReplicas=2, status={"lastRequestTime": "2023-12-31T23:00:00Z"})
    plan = _plan(srv, {"gemma": READY})
    assert plan.children[0]["spec"]["replicas"] == 0
    assert _reasons(plan)["ScaledToZero"] == ("True", "KeepAliveExpired")


@pytest.mark.parametrize(
    ("annotations", "replicas"),
    [
        ({"corral.dev/idle-deadline": "2024-01-01T00:30:00Z"}, 1),
        ({"corral.dev/in-flight": "2"}, 1),
        ({"corral.dev/idle-deadline": "2023-12-31T23:59:00Z"}, 0),
    ],
    ids=["requested-keep-alive", "in-flight", "deadline-passed"],
)
def test_the_reconcile_honours_the_gateways_annotations(
    annotations: dict[str, str], replicas: int
) -> None:
    # Past keepAliveSeconds, the resync's reconcile decides as the keep-alive timer does: a
    # request's keep_alive or requests in flight keep the server up.
    srv = server(
        replicas=1,
        maxReplicas=2,
        keepAliveSeconds=30,
        status={"lastRequestTime": "2023-12-31T23:59:50Z"},
    )
    srv["metadata"]["annotations"] = annotations
    late = NOW + timedelta(seconds=60)
    plan = plan_modelserver(srv, {"gemma": READY}, None, OperatorSettings(), late)
    assert plan.children[0]["spec"]["replicas"] == replicas


def test_the_network_policy_can_be_left_out() -> None:
    settings = OperatorSettings(runtime_network_policy=False)
    plan = plan_modelserver(server(), {"gemma": READY}, None, settings, NOW)
    assert [c["kind"] for c in plan.children] == ["Deployment", "Service"]

"""The keep-alive timer's decision (planners.replicas.idle_replicas) is the reconcile's own, and an
in-flight count counts only while the gateway keeps it fresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.api import ANNOTATION_IDLE_DEADLINE, ANNOTATION_IN_FLIGHT
from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.planners.replicas import effective_in_flight, idle_replicas
from corral_operator.settings import OperatorSettings
from tests.unit.operator.factories import GEMMA_STATUS, model
from tests.unit.operator.factories import server as make_server

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_in_flight_counts_only_while_fresh() -> None:
    assert effective_in_flight("2", NOW - timedelta(seconds=30), NOW, 120) == 2
    assert effective_in_flight("2", NOW - timedelta(seconds=300), NOW, 120) == 0
    assert effective_in_flight(None, NOW, NOW, 120) == 0
    assert effective_in_flight("x", NOW, NOW, 120) == 0


def server(replicas: int | None = 1, **annotations: str) -> dict[str, Any]:
    srv = make_server(
        status={"lastRequestTime": "2025-01-01T11:58:00Z"}, maxReplicas=2, keepAliveSeconds=60
    )
    if replicas is not None:
        srv["spec"]["replicas"] = replicas
    srv["metadata"]["annotations"] = annotations
    return srv


CASES = {
    "idle": (server(), 0),
    "in-flight": (server(**{ANNOTATION_IN_FLIGHT: "1"}), None),
    "requested-keep-alive": (server(**{ANNOTATION_IDLE_DEADLINE: "2025-01-01T12:10:00Z"}), None),
    "keep-alive-0": (server(**{ANNOTATION_IDLE_DEADLINE: "2025-01-01T11:58:00Z"}), 0),
    "already-min": (server(replicas=0), None),
    "unset": (server(replicas=None), None),
}


@pytest.mark.parametrize(("srv", "expected"), CASES.values(), ids=CASES.keys())
def test_the_timer_and_the_reconcile_decide_alike(
    srv: dict[str, Any], expected: int | None
) -> None:
    timer = idle_replicas(srv, NOW, OperatorSettings().in_flight_stale_seconds)
    assert timer == expected
    ready = model(status=dict(GEMMA_STATUS))
    plan = plan_modelserver(srv, {"gemma": ready}, None, OperatorSettings(), NOW)
    requested = srv["spec"].get("replicas", 0)
    assert plan.children[0]["spec"]["replicas"] == (requested if timer is None else timer)

"""The one replica decision, as the reconcile (and the resync) and the keep-alive timer take it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.api import (
    ANNOTATION_IDLE_DEADLINE,
    ANNOTATION_IN_FLIGHT,
    FOREVER,
    max_keep_alive,
)
from corral_operator.planners.replicas import Activity, decide_replicas, server_replicas

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("low", "high", "requested", "expected", "reason"),
    [
        (0, 1, None, 0, "MinReplicas"),
        (2, 4, None, 2, "MinReplicas"),
        (0, 3, 2, 2, "Requested"),
        (0, 3, 9, 3, "Requested"),
        (2, 3, 0, 2, "Requested"),
        (3, 1, 5, 3, "Requested"),  # min > max: min wins, the spec problem is reported apart
    ],
)
def test_clamps_to_bounds(
    low: int, high: int, requested: int | None, expected: int, reason: str
) -> None:
    decision = decide_replicas(min_replicas=low, max_replicas=high, requested=requested)
    assert (decision.replicas, decision.reason) == (expected, reason)


def decide(activity: Activity, **kwargs: Any) -> tuple[int, str]:
    args: dict[str, Any] = {
        "min_replicas": 0,
        "max_replicas": 2,
        "requested": 2,
        "now": NOW,
        "activity": activity,
        "keep_alive_seconds": 300,
        "max_keep_alive_seconds": 3600,
    }
    args.update(kwargs)
    decision = decide_replicas(**args)
    return decision.replicas, decision.reason


def test_keep_alive_expiry_falls_back_to_min() -> None:
    assert decide(Activity(ago(301))) == (0, "KeepAliveExpired")
    assert decide(Activity(ago(300))) == (0, "KeepAliveExpired")  # at the deadline
    assert decide(Activity(ago(301)), min_replicas=1) == (1, "KeepAliveExpired")


@pytest.mark.parametrize(
    "activity",
    [Activity(ago(299)), Activity(None), Activity(ago(1000), in_flight=1)],
    ids=["recent", "unknown", "in-flight"],
)
def test_no_scale_down_while_active_or_unknown(activity: Activity) -> None:
    assert decide(activity) == (2, "Requested")


def test_a_requested_keep_alive_outlives_keep_alive_seconds() -> None:
    # The resync after keepAliveSeconds must not scale down what a request asked to keep up.
    assert decide(Activity(ago(600), idle_deadline=later(60))) == (2, "Requested")
    assert decide(Activity(ago(600), idle_deadline=ago(1))) == (0, "KeepAliveExpired")


def test_a_requested_keep_alive_can_let_the_server_go_early() -> None:
    # keep_alive 0 (or one shorter than keepAliveSeconds) for every model: the server may go.
    assert decide(Activity(ago(5), idle_deadline=ago(5))) == (0, "KeepAliveExpired")
    assert decide(Activity(ago(5), idle_deadline=later(5))) == (2, "Requested")


def test_the_requested_deadline_is_bounded_after_the_last_request() -> None:
    forever = Activity(ago(3601), idle_deadline=FOREVER)
    assert decide(forever) == (0, "KeepAliveExpired")
    assert decide(forever, max_keep_alive_seconds=None) == (2, "Requested")  # no bound
    assert decide(Activity(ago(3599), idle_deadline=FOREVER)) == (2, "Requested")
    # A keepAliveSeconds beyond the bound still holds for requests that set none.
    assert decide(forever, keep_alive_seconds=7200) == (2, "Requested")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({}, 3600.0), ({"maxKeepAliveSeconds": 60}, 60.0), ({"maxKeepAliveSeconds": -1}, None)],
)
def test_max_keep_alive_of_the_spec(spec: dict[str, Any], expected: float | None) -> None:
    assert max_keep_alive(spec) == expected


def server(annotations: dict[str, str], last: str | None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "namespace": "ns", "annotations": annotations},
        "spec": {"models": ["m"], "replicas": 1, "minReplicas": 0, "keepAliveSeconds": 60, **spec},
        "status": {"lastRequestTime": last} if last else {},
    }


def test_server_replicas_reads_both_annotations_and_last_request_time() -> None:
    two_minutes_ago = "2025-01-01T11:58:00Z"
    assert server_replicas(server({}, two_minutes_ago), NOW).replicas == 0
    assert server_replicas(server({}, None), NOW).replicas == 1
    kept = server({ANNOTATION_IDLE_DEADLINE: "2025-01-01T12:10:00Z"}, two_minutes_ago)
    assert server_replicas(kept, NOW).replicas == 1
    busy = server({ANNOTATION_IN_FLIGHT: "1"}, two_minutes_ago)
    assert server_replicas(busy, NOW).replicas == 1
    # An in-flight count is trusted only while lastRequestTime is fresh.
    assert server_replicas(busy, NOW + timedelta(minutes=5)).replicas == 0
    assert server_replicas(server({}, None, maxReplicas=3, replicas=5), NOW).replicas == 3

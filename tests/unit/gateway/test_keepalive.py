"""The operator's keep-alive decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.keepalive import (
    ANNOTATION_IDLE_DEADLINE,
    ANNOTATION_IN_FLIGHT,
    KeepAliveSettings,
    decide_idle_scale,
    effective_in_flight,
    idle_replicas,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def decide(**kwargs: Any) -> int:
    args: dict[str, Any] = {
        "now": NOW,
        "last_request_time": NOW - timedelta(seconds=301),
        "keep_alive_seconds": 300,
        "in_flight": 0,
        "min_replicas": 0,
        "current_replicas": 1,
        "extended_deadline": None,
        "max_extension_seconds": 3600,
    }
    args.update(kwargs)
    return decide_idle_scale(**args)


def test_idle_past_keep_alive_scales_to_min() -> None:
    assert decide() == 0
    assert decide(min_replicas=1, current_replicas=3) == 1


def test_recent_activity_keeps_replicas() -> None:
    assert decide(last_request_time=NOW - timedelta(seconds=299)) == 1


def test_exactly_at_the_deadline_scales_down() -> None:
    assert decide(last_request_time=NOW - timedelta(seconds=300)) == 0


def test_requests_in_flight_keep_replicas() -> None:
    assert decide(in_flight=1) == 1


def test_unknown_idleness_never_scales_down() -> None:
    assert decide(last_request_time=None) == 1


def test_already_at_min_is_left_alone() -> None:
    assert decide(current_replicas=0) == 0


def test_keep_alive_extension_postpones() -> None:
    assert decide(extended_deadline=NOW + timedelta(seconds=1)) == 1
    assert decide(extended_deadline=NOW - timedelta(seconds=1)) == 0


def test_extension_is_capped_after_the_last_request() -> None:
    last = NOW - timedelta(hours=2)
    assert decide(last_request_time=last, extended_deadline=NOW + timedelta(days=1)) == 0


def test_an_earlier_extension_never_shortens_the_spec() -> None:
    assert (
        decide(
            last_request_time=NOW - timedelta(seconds=10),
            extended_deadline=NOW - timedelta(seconds=5),
        )
        == 1
    )


def test_in_flight_counts_only_while_fresh() -> None:
    assert effective_in_flight("2", NOW - timedelta(seconds=30), NOW, 120) == 2
    assert effective_in_flight("2", NOW - timedelta(seconds=300), NOW, 120) == 0
    assert effective_in_flight(None, NOW, NOW, 120) == 0
    assert effective_in_flight("x", NOW, NOW, 120) == 0


def server(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "namespace": "ns", "annotations": annotations},
        "spec": {"models": ["m"], "replicas": 1, "minReplicas": 0, "keepAliveSeconds": 60},
        "status": {"lastRequestTime": "2025-01-01T11:58:00Z"},
    }


def test_idle_replicas_reads_the_server() -> None:
    settings = KeepAliveSettings()
    assert idle_replicas(server(), NOW, settings) == 0
    assert idle_replicas(server(**{ANNOTATION_IN_FLIGHT: "1"}), NOW, settings) is None
    assert (
        idle_replicas(server(**{ANNOTATION_IDLE_DEADLINE: "2025-01-01T12:10:00Z"}), NOW, settings)
        is None
    )

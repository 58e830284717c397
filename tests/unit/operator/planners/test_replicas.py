from __future__ import annotations

import pytest

from corral_operator.planners.replicas import decide_replicas

pytestmark = pytest.mark.unit


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


def test_keep_alive_expiry_falls_back_to_min() -> None:
    decision = decide_replicas(
        min_replicas=0, max_replicas=2, requested=2, idle_seconds=301, keep_alive_seconds=300
    )
    assert (decision.replicas, decision.reason) == (0, "KeepAliveExpired")


@pytest.mark.parametrize(("idle", "in_flight"), [(299.0, 0), (None, 0), (1000.0, 1)])
def test_no_scale_down_while_active_or_unknown(idle: float | None, in_flight: int) -> None:
    decision = decide_replicas(
        min_replicas=0,
        max_replicas=2,
        requested=2,
        idle_seconds=idle,
        keep_alive_seconds=300,
        in_flight=in_flight,
    )
    assert decision.replicas == 2

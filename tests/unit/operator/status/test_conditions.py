from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral_operator.status.conditions import Condition, merge_conditions, status_changes

pytestmark = pytest.mark.unit

T1 = datetime(2024, 1, 1, tzinfo=UTC)
T2 = datetime(2024, 1, 2, tzinfo=UTC)


def test_transition_time_changes_only_with_status() -> None:
    first = merge_conditions(None, [Condition("Ready", "False", "Pulling", "x")], 1, T1)
    same = merge_conditions(first, [Condition("Ready", "False", "Pulling", "y")], 2, T2)
    assert same[0]["lastTransitionTime"] == "2024-01-01T00:00:00Z"
    assert same[0]["message"] == "y" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [Condition("Ready", "True", "Ready")], 2, T2)
    assert flipped[0]["lastTransitionTime"] == "2024-01-02T00:00:00Z"
    assert "message" not in flipped[0]


def test_other_conditions_are_kept_and_sorted() -> None:
    existing = [{"type": "Zeta", "status": "True", "reason": "Other"}]
    merged = merge_conditions(existing, [Condition("Alpha", "True", "A")], None, T1)
    assert [c["type"] for c in merged] == ["Alpha", "Zeta"]


def test_status_changes_is_empty_when_nothing_changed() -> None:
    current = {"a": 1, "b": [1]}
    assert status_changes(current, {"a": 1, "b": [1]}) == {}
    assert status_changes(current, {"a": 2}) == {"a": 2}

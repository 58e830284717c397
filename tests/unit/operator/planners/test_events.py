"""The Events of a reconcile: one per transition (a pull's start, milestones, end or failure; a
server's scaling, readiness and trouble), none for a resync that changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.api import ANNOTATION_IDLE_DEADLINE
from corral_operator.planners.events import (
    Event,
    collected_event,
    model_events,
    server_events,
)
from corral_operator.status.conditions import Condition, merge_conditions
from tests.unit.operator.factories import server

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
JOB = "corral-pull-gemma-1234"
PULLING = (Condition("Pulled", "False", "Pulling", f"pull Job {JOB} running"),)
PULLED = (Condition("Pulled", "True", "Pulled", "gemma3:270m is in the cache"),)


def stored(status: dict[str, Any], conditions: Sequence[Condition]) -> dict[str, Any]:
    """The status as write_status leaves it: the fields and the merged conditions."""
    return {**status, "conditions": merge_conditions(status.get("conditions"), conditions, 1)}


def pulling(**fields: Any) -> dict[str, Any]:
    return {"source": "gemma3:270m", "pullJob": JOB, **fields}


def reasons(events: Sequence[Event]) -> list[str]:
    return [e.reason for e in events]


def test_a_pull_tells_its_story_once_per_step() -> None:
    steps: list[tuple[dict[str, Any], tuple[Condition, ...], list[str]]] = [
        (pulling(), PULLING, ["PullStarted"]),
        (pulling(), PULLING, []),  # the resync of a pull that has not moved
        (pulling(completedBytes=30, totalBytes=100), PULLING, ["PullProgress"]),
        (pulling(completedBytes=40, totalBytes=100), PULLING, []),
        (pulling(completedBytes=100, totalBytes=100), PULLING, ["PullProgress"]),
        (
            pulling(name="gemma3:270m", sizeBytes=291_000_000, digest="sha256:ab"),
            PULLED,
            ["Pulled"],
        ),
        (pulling(name="gemma3:270m", sizeBytes=291_000_000, digest="sha256:ab"), PULLED, []),
    ]
    previous: dict[str, Any] = {}
    for status, conditions, expected in steps:
        events = model_events(previous, status, conditions)
        assert reasons(events) == expected, status
        previous = stored({**previous, **status}, conditions)
    assert events == [] and previous["sizeBytes"] == 291_000_000


def test_the_events_say_what_happened() -> None:
    (started,) = model_events({}, pulling(), PULLING)
    assert started == Event("Normal", "PullStarted", f"pulling gemma3:270m with Job {JOB}")
    status = pulling(name="gemma3:270m", sizeBytes=291_000_000, digest="sha256:ab")
    (pulled,) = model_events(stored(pulling(), PULLING), status, PULLED)
    assert pulled == Event("Normal", "Pulled", "gemma3:270m is in the cache (291 MB, sha256:ab)")


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (None, 26, "25% of 1 MB pulled"),
        (20, 55, "50% of 1 MB pulled"),
        (10, 99, "75% of 1 MB pulled"),  # one Event, the highest milestone passed
        (50, 74, None),
        (80, 100, None),
    ],
)
def test_progress_milestones_once_each(before: int | None, after: int, message: str | None) -> None:
    total = 1_000_000
    previous = stored(
        pulling(**({} if before is None else {"completedBytes": before * total // 100})),
        PULLING,
    )
    previous["totalBytes"] = total if before is not None else None
    events = model_events(
        previous, pulling(completedBytes=after * total // 100, totalBytes=total), PULLING
    )
    assert [e.message for e in events] == ([message] if message else [])


def test_a_failed_pull_warns_once_with_its_reason() -> None:
    failed = (Condition("Pulled", "False", "PullFailed", f"pull Job {JOB}: no such model"),)
    previous = stored(pulling(), PULLING)
    assert model_events(previous, pulling(), failed) == [
        Event("Warning", "PullFailed", f"pull Job {JOB}: no such model")
    ]
    assert model_events(stored(pulling(), failed), pulling(), failed) == []


def test_a_new_spec_starts_a_new_pull() -> None:
    previous = stored(pulling(name="gemma3:270m"), PULLED)
    status = {**pulling(), "pullJob": "corral-pull-gemma-5678"}
    starting = (Condition("Pulled", "False", "Pulling", "starting pull Job"),)
    assert reasons(model_events(previous, status, starting)) == ["PullStarted"]


def test_a_collected_model_names_its_cache() -> None:
    assert collected_event("gemma3:270m", "corral-cache-default") == Event(
        "Normal", "CacheCollected", "removed gemma3:270m from cache corral-cache-default"
    )


def _ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("spec", "status", "replicas", "message"),
    [
        (
            {"replicas": 1},
            {"lastRequestTime": _ago(1)},
            (0, 1),
            "scaled from 0 to 1 replicas: a request woke it",
        ),
        (
            {"replicas": 0},
            {"lastRequestTime": _ago(600)},
            (1, 0),
            "scaled from 1 to 0 replicas: idle past its keep-alive: down to minReplicas (0)",
        ),
        (
            {"replicas": 1},
            {"lastRequestTime": _ago(600)},
            (1, 0),
            "scaled from 1 to 0 replicas: idle past its keep-alive: down to minReplicas (0)",
        ),
        ({"minReplicas": 1}, {}, (0, 1), "scaled from 0 to 1 replicas: minReplicas is 1"),
        (
            {"replicas": 5, "maxReplicas": 2},
            {},
            (1, 2),
            "scaled from 1 to 2 replicas: 5 requested, capped at maxReplicas (2)",
        ),
        (
            {"replicas": 3, "maxReplicas": 4},
            {},
            (1, 3),
            "scaled from 1 to 3 replicas: 3 requested (spec.replicas)",
        ),
    ],
)
def test_scaling_says_why(
    spec: dict[str, Any], status: dict[str, Any], replicas: tuple[int, int], message: str
) -> None:
    obj = server(status=status, **spec)
    (event,) = server_events(obj, replicas, (), NOW)
    assert event.type == "Normal" and event.message == message
    assert event.reason == ("ScaledUp" if replicas[1] > replicas[0] else "ScaledDown")


def test_a_requested_keep_alive_counts_as_the_deadline() -> None:
    # The gateway's idle deadline (a request's keep_alive) passed: the scale-down is its expiry.
    obj = server(status={"lastRequestTime": _ago(10)}, replicas=0)
    obj["metadata"]["annotations"] = {ANNOTATION_IDLE_DEADLINE: _ago(5)}
    (event,) = server_events(obj, (1, 0), (), NOW)
    assert "keep-alive" in event.message


def test_unchanged_replicas_post_nothing() -> None:
    assert server_events(server(replicas=1), (1, 1), (), NOW) == []
    assert server_events(server(replicas=1), None, (), NOW) == []


WAITING = (
    Condition("ModelsReady", "False", "ModelsNotReady", "waiting for Model gemma to be Ready"),
    Condition("Ready", "False", "ModelsNotReady", "waiting for Model gemma to be Ready"),
)
AVAILABLE = (
    Condition("ModelsReady", "True", "ModelsReady", "gemma3:270m"),
    Condition("Ready", "True", "Available", "1/1 replicas ready"),
)
UNSCHEDULABLE = (
    Condition("ModelsReady", "True", "ModelsReady", "gemma3:270m"),
    Condition("Ready", "False", "Unschedulable", "pod p cannot be scheduled: no GPU"),
)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ((), WAITING, [Event("Warning", "ModelsNotReady", "waiting for Model gemma to be Ready")]),
        (WAITING, WAITING, []),
        (
            WAITING,
            AVAILABLE,
            [Event("Normal", "Ready", "1/1 replicas ready; models loaded: gemma3:270m")],
        ),
        (AVAILABLE, AVAILABLE, []),
        (
            AVAILABLE,
            UNSCHEDULABLE,
            [Event("Warning", "Unschedulable", "pod p cannot be scheduled: no GPU")],
        ),
        (UNSCHEDULABLE, UNSCHEDULABLE, []),
        (
            (),
            (Condition("Ready", "False", "OOMKilled", "container runtime was killed"),),
            [Event("Warning", "OOMKilled", "container runtime was killed")],
        ),
        ((), (Condition("Ready", "False", "Starting", "0/1 replicas ready"),), []),
    ],
)
def test_server_conditions_post_on_transitions_only(
    before: tuple[Condition, ...], after: tuple[Condition, ...], expected: list[Event]
) -> None:
    obj = server(status=stored({}, before) if before else {})
    assert server_events(obj, None, after, NOW) == expected

"""Conditions as the Kubernetes API conventions describe them.

A condition keeps its ``lastTransitionTime`` while its status stays the same, so that a
reconcile which observes nothing new writes nothing new: status patches are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition as the operator decides it, before timestamps are attached."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes times."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    decided: Iterable[Condition],
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The new ``conditions`` list: decided conditions replace those of the same type.

    ``lastTransitionTime`` is carried over unless the status changed. Conditions of types not
    decided this time are kept, so other writers' conditions survive.
    """
    previous = {str(c.get("type")): dict(c) for c in existing or ()}
    result: dict[str, dict[str, Any]] = dict(previous)
    for cond in decided:
        before = previous.get(cond.type)
        changed = before is None or before.get("status") != cond.status
        transition = (
            timestamp(now) if changed or before is None else before.get("lastTransitionTime")
        )
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "lastTransitionTime": transition or timestamp(now),
        }
        # An empty message is left out: the API server reads "" in a merge patch as null.
        if cond.message:
            entry["message"] = cond.message
        if generation is not None:
            entry["observedGeneration"] = generation
        result[cond.type] = entry
    return sorted(result.values(), key=lambda c: str(c["type"]))


def find_condition(
    conditions: Sequence[Mapping[str, Any]] | None, type_: str
) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> bool:
    cond = find_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def status_changes(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``desired`` that differs from ``current`` (a merge patch; None deletes)."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}

"""Writing a status: the conditions and fields a planner decided, merged with what the object
reports, patched only where they differ (a reconcile that observes nothing new writes nothing)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral_operator.kube import Kube
from corral_operator.status.conditions import Condition, merge_conditions, status_changes


def write_status(
    kube: Kube, obj: Mapping[str, Any], fields: Mapping[str, Any], conditions: Iterable[Condition]
) -> None:
    """Patch the status subresource with whatever differs from what is there."""
    meta = obj["metadata"]
    current = obj.get("status") or {}
    generation = meta.get("generation")
    desired = {
        **fields,
        "observedGeneration": generation,
        "conditions": merge_conditions(current.get("conditions"), conditions, generation),
    }
    changes = status_changes(current, desired)
    if changes:
        kube.patch_status(obj["kind"], meta["namespace"], meta["name"], changes)

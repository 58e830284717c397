"""What a plan's execution reports: created, configured or unchanged, from the API server's
resourceVersion and our field manager's entry before and after the apply, and the names kubectl
would print."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.api import FIELD_MANAGER
from corral_operator.handlers.apply import apply_verdict, display_name

pytestmark = pytest.mark.unit


def stored(resource_version: str | None, applied_at: str | None = None) -> dict[str, Any]:
    """An object as the API server answers it; ``applied_at``: when our apply last changed it."""
    meta: dict[str, Any] = {"name": "x"}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    if applied_at is not None:
        ours = {"manager": FIELD_MANAGER, "operation": "Apply", "time": applied_at}
        others = {"manager": "kube-controller-manager", "operation": "Update", "time": "t9"}
        meta["managedFields"] = [others, ours]
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("before", "after", "verdict"),
    [
        (None, stored("7", "t1"), "created"),
        (stored("7", "t1"), stored("7", "t1"), "unchanged"),
        (stored("7", "t1"), stored("9", "t2"), "configured"),
        # Another writer moved the version between our read and our apply; ours changed nothing.
        (stored("7", "t1"), stored("9", "t1"), "unchanged"),
        # Fields we did not own before are ours now.
        (stored("7"), stored("9", "t2"), "configured"),
        # No version to compare: say it may have changed rather than hide a change.
        (stored(None), stored(None), "configured"),
        (stored("7"), stored(None), "configured"),
    ],
    ids=[
        "absent",
        "same-version",
        "new-version",
        "another-writer",
        "taken-over",
        "no-versions",
        "answer-without-version",
    ],
)
def test_the_verdict_is_the_api_servers(
    before: dict[str, Any] | None, after: dict[str, Any], verdict: str
) -> None:
    assert apply_verdict(before, after) == verdict


@pytest.mark.parametrize(
    ("kind", "shown"),
    [
        ("Deployment", "deployment.apps/x"),
        ("Service", "service/x"),
        ("PersistentVolumeClaim", "persistentvolumeclaim/x"),
        ("Job", "job.batch/x"),
        ("NetworkPolicy", "networkpolicy.networking.k8s.io/x"),
        ("Model", "model.corral.dev/x"),
    ],
)
def test_objects_are_named_as_kubectl_names_them(kind: str, shown: str) -> None:
    assert display_name(kind, "x") == shown

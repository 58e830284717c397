"""What a plan's execution reports: created, configured or unchanged, from the API server's
resourceVersion before and after the apply, and the names kubectl would print."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.handlers.apply import apply_verdict, display_name

pytestmark = pytest.mark.unit


def stored(resource_version: str | None) -> dict[str, Any]:
    meta = (
        {"name": "x"}
        if resource_version is None
        else {"name": "x", "resourceVersion": resource_version}
    )
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("before", "after", "verdict"),
    [
        (None, stored("7"), "created"),
        (stored("7"), stored("7"), "unchanged"),
        (stored("7"), stored("9"), "configured"),
        # No version to compare: say it may have changed rather than hide a change.
        (stored(None), stored(None), "configured"),
        (stored("7"), stored(None), "configured"),
    ],
    ids=["absent", "same-version", "new-version", "no-versions", "answer-without-version"],
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

"""What a plan's execution reports: created, configured or unchanged, from the API server's
answers to our applies (status code, resourceVersion, our managedFields entry, its clock), and
the names kubectl would print."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest

from corral_operator.handlers.apply import apply_verdict, display_name
from corral_operator.handlers.context import Context
from corral_operator.kube import Applied, Kube
from corral_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def answer(
    version: str, changed_at: str | None = "2026-01-02T03:04:05Z", *, created: bool = False
) -> Applied:
    """An apply's answer: ``changed_at`` is our managedFields entry's time (None: no entry)."""
    ours = None if changed_at is None else {"manager": "corral-operator", "time": changed_at}
    return Applied(created=created, resource_version=version, ours=ours, server_time=NOW)


EARLIER = "2026-01-01T00:00:00Z"

CASES = {
    "created": (None, answer("7", created=True), "created"),
    "recreated": (answer("7"), answer("12", created=True), "created"),
    "same-version": (answer("7", EARLIER), answer("7", EARLIER), "unchanged"),
    "our-change": (answer("7", EARLIER), answer("9"), "configured"),
    # Another writer moved the version since our last apply; ours changed nothing.
    "another-writer": (answer("7", EARLIER), answer("9", EARLIER), "unchanged"),
    # The first apply since the operator started: our entry's time against the server's clock.
    "first-changed-now": (None, answer("7"), "configured"),
    "first-changed-a-second-ago": (None, answer("7", "2026-01-02T03:04:04Z"), "configured"),
    "first-changed-earlier": (None, answer("7", EARLIER), "unchanged"),
    # No entry of ours to read: say it may have changed rather than hide a change.
    "first-without-entry": (None, answer("7", None), "configured"),
}


@pytest.mark.parametrize(("previous", "now", "verdict"), CASES.values(), ids=CASES.keys())
def test_the_verdict_is_the_api_servers(
    previous: Applied | None, now: Applied, verdict: str
) -> None:
    assert apply_verdict(previous, now) == verdict


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


def test_a_gone_owner_takes_its_childrens_answers_along() -> None:
    # Kept answers would otherwise pile up for every ModelServer and Model ever deleted.
    ctx = Context(kube=cast(Kube, None), settings=OperatorSettings())
    for kind in ("Deployment", "Service", "NetworkPolicy"):
        ctx.applied[(kind, "ns", "srv")] = answer("1")
    ctx.applied[("Deployment", "other", "srv")] = answer("2")
    ctx.applied[("Job", "ns", "srv-pull")] = answer("3")
    ctx.forget("ns", "srv")
    assert set(ctx.applied) == {("Deployment", "other", "srv"), ("Job", "ns", "srv-pull")}

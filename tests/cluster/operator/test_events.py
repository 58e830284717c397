"""The Events kubectl describe shows of a Model and a ModelServer, posted by the real operator
on the real control plane: each step of the story once, none again while resyncs pass, and
none of kopf's per-handler INFO lines among them."""

from __future__ import annotations

import collections
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from corral_operator.api import rfc3339
from corral_operator.kube import Kube
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster
RESYNC_SECONDS = 2


@pytest.fixture
def operator_env() -> dict[str, str]:
    return {
        "CORRAL_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "CORRAL_OPERATOR_PULL_BACKOFF_LIMIT": "0",
        "CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS": "1",
    }


def events(cluster: Cluster, kind: str, name: str) -> list[Any]:
    """The Events about one object, as kubectl describe selects them."""
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    found = cluster.core.list_namespaced_event(cluster.ns, field_selector=selector).items
    return sorted(found, key=lambda e: e.metadata.creation_timestamp)


def reasons(cluster: Cluster, kind: str, name: str) -> list[str]:
    return [e.reason for e in events(cluster, kind, name)]


def has_reasons(cluster: Cluster, kind: str, name: str, *wanted: str) -> list[str] | None:
    seen = reasons(cluster, kind, name)
    return seen if set(wanted) <= set(seen) else None


def posted(cluster: Cluster, kind: str, name: str, reason: str) -> list[Any]:
    """The Events of one reason about one object, once there are any."""
    return wait_for(
        lambda: [e for e in events(cluster, kind, name) if e.reason == reason],
        20,
        f"a {reason} Event about {kind} {name}",
    )


def _model(cluster: Cluster, name: str, source: str) -> None:
    cluster.create(
        "models", {"kind": "Model", "metadata": {"name": name}, "spec": {"source": source}}
    )


def _server(cluster: Cluster, **spec: Any) -> None:
    body = {
        "kind": "ModelServer",
        "metadata": {"name": "srv"},
        "spec": {"models": ["gemma"], **spec},
    }
    cluster.create("modelservers", body)


def test_a_model_and_its_server_tell_their_story_once(
    cluster: Cluster, operator: Operator, kubectl: Any
) -> None:
    _model(cluster, "gemma", "gemma3:270m")
    _server(cluster, minReplicas=1, maxReplicas=2)
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "False", "ModelsNotReady")
    job = cluster.play_pull("gemma")
    cluster.wait_condition("models", "gemma", "Ready", "True")
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "True")
    wait_for(
        lambda: has_reasons(cluster, "Model", "gemma", "PullStarted", "Pulled"),
        20,
        "the Model's PullStarted and Pulled Events",
    )
    wait_for(
        lambda: has_reasons(cluster, "ModelServer", "srv", "ModelsNotReady", "ScaledUp"),
        20,
        "the ModelServer's ModelsNotReady and ScaledUp Events",
    )

    by_reason = {e.reason: e for e in events(cluster, "Model", "gemma")}
    assert by_reason["PullStarted"].type == "Normal"
    assert by_reason["PullStarted"].message == f"pulling gemma3:270m with Job {job}"
    assert by_reason["Pulled"].message == (
        f"gemma3:270m is in the cache (253 MB, sha256:{'ab' * 32})"
    )
    by_reason = {e.reason: e for e in events(cluster, "ModelServer", "srv")}
    assert by_reason["ModelsNotReady"].type == "Warning"
    assert by_reason["ScaledUp"].message == "scaled from 0 to 1 replicas: minReplicas is 1"

    # kubectl describe finds them (by the object's kind, name and uid).
    described = kubectl("describe", "model", "gemma", "-n", cluster.ns, check=True).stdout
    assert re.search(r"Normal\s+PullStarted\s", described), described
    assert re.search(r"Normal\s+Pulled\s", described), described
    described = kubectl("describe", "modelserver", "srv", "-n", cluster.ns, check=True).stdout
    assert re.search(r"Warning\s+ModelsNotReady\s", described), described
    assert re.search(r"Normal\s+ScaledUp\s", described), described

    # Several resync periods reconcile both objects again: nothing new to tell.
    before = {kind: reasons(cluster, kind, name) for kind, name in _OBJECTS}
    time.sleep(4 * RESYNC_SECONDS)
    for kind, name in _OBJECTS:
        seen = reasons(cluster, kind, name)
        assert seen == before[kind], kind
        assert not [r for r, n in collections.Counter(seen).items() if n > 1], seen
        # kopf's own INFO lines ("Handler ... succeeded", "... created") are no Events.
        assert "Logging" not in seen, seen


_OBJECTS = (("Model", "gemma"), ("ModelServer", "srv"))


def test_a_failed_pull_warns_with_its_reason(cluster: Cluster, operator: Operator) -> None:
    _model(cluster, "m", "https://example.com/missing.gguf")
    cluster.play_pull("m", {"error": "HTTP 404 from example.com"}, exit_code=1)
    failed = posted(cluster, "Model", "m", "PullFailed")
    assert len(failed) == 1 and failed[0].type == "Warning"
    assert "HTTP 404 from example.com" in failed[0].message


def test_a_collected_model_says_so(cluster: Cluster, operator: Operator) -> None:
    cluster.ready_model("gemma")
    cluster.delete("models", "gemma")
    wait_for(lambda: cluster.finish_gc_pods(), 20, "the collect Job's pod")
    collected = posted(cluster, "Model", "gemma", "CacheCollected")
    assert collected[0].message == "removed gemma3:270m from cache corral-cache-default"
    wait_for(lambda: cluster.get("models", "gemma") is None, 20, "the Model gone")


def test_a_request_wakes_the_server_and_its_keep_alive_puts_it_back(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.ready_model("gemma")
    _server(cluster, keepAliveSeconds=2)
    cluster.wait_condition("modelservers", "srv", "ModelsReady", "True")
    # A request arrives, as the gateway records one: its activity, then the scale.
    kube = Kube(cluster.api)
    kube.patch_status(
        "ModelServer", cluster.ns, "srv", {"lastRequestTime": rfc3339(datetime.now(UTC))}
    )
    kube.scale("ModelServer", cluster.ns, "srv", 1, unset=True)
    wait_for(
        lambda: has_reasons(cluster, "ModelServer", "srv", "ScaledUp", "ScaledDown"),
        30,
        "the server scaled up, then down",
    )
    messages = [
        e.message for e in events(cluster, "ModelServer", "srv") if e.reason.startswith("Scaled")
    ]
    assert messages == [
        "scaled from 0 to 1 replicas: a request woke it",
        "scaled from 1 to 0 replicas: idle past its keep-alive: down to minReplicas (0)",
    ]

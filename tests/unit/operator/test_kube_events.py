"""The Event the operator posts: what ``kubectl describe`` finds (by the object's kind, name,
namespace and uid) and what the API server accepts (a message of at most 1 KiB)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral_operator.kube import EVENT_MESSAGE_LIMIT, event_body, resource_path
from tests.unit.operator.factories import model

pytestmark = pytest.mark.unit


def test_an_event_names_its_object() -> None:
    body = event_body(model(), "Normal", "Pulled", "in the cache", datetime(2025, 1, 1, tzinfo=UTC))
    assert body["involvedObject"] == {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "name": "gemma",
        "namespace": "ns",
        "uid": "uid-gemma",
    }
    assert body["metadata"] == {"generateName": "gemma.", "namespace": "ns"}
    assert (body["type"], body["reason"], body["count"]) == ("Normal", "Pulled", 1)
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2025-01-01T00:00:00Z"
    assert body["source"] == {"component": "corral-operator"}
    assert resource_path("Event", "ns") == "/api/v1/namespaces/ns/events"


def test_a_long_message_is_cut_to_what_the_api_server_takes() -> None:
    body = event_body(model(), "Warning", "PullFailed", "x" * 5000, datetime.now(UTC))
    assert len(body["message"]) == EVENT_MESSAGE_LIMIT

"""The API calls a wake-up makes: the activity write and the replicas read go out together (a
wake-up from zero waits one round trip for both, not two), and the replicas are raised only
after the activity is recorded, so the keep-alive cannot take the wake-up for idleness."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s

from corral_operator import api
from corral_operator.gateway.cluster import ClusterBackend
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.kube import Kube

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# Long enough for a thread to start on a busy machine, short enough for a failing run.
OVERLAP_WAIT_SECONDS = 5.0


class RecordingKube(Kube):
    """The Kube of a backend, answering from ``replicas`` and recording the calls in order;
    the activity write waits for the replicas read to have started, as it would overlap a
    real API server's round trip, and fails if the read never comes alongside it."""

    def __init__(self, replicas: int | None) -> None:
        super().__init__(k8s.ApiClient())
        self.replicas = replicas
        self.calls: list[tuple[str, Any]] = []
        self.read_started = threading.Event()
        self.lock = threading.Lock()

    def _note(self, call: str, detail: Any) -> None:
        with self.lock:
            self.calls.append((call, detail))

    def read_replicas(self, kind: str, namespace: str, name: str) -> int | None:
        self.read_started.set()
        self._note("read", None)
        return self.replicas

    def merge_patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        if subresource == "status":
            if not self.read_started.wait(OVERLAP_WAIT_SECONDS):
                raise AssertionError("the replicas read did not go out beside the activity write")
            self._note("activity", patch["status"]["lastRequestTime"])
        else:
            self._note(subresource or "object", dict(patch))
        return {}


def backend_with(kube: RecordingKube) -> ClusterBackend:
    backend = ClusterBackend(GatewaySettings(), client=kube.client)
    backend.kube = kube
    return backend


async def test_a_wake_from_zero_reads_while_it_records_activity_then_scales() -> None:
    kube = RecordingKube(replicas=0)
    await backend_with(kube).scale(("ns", "gemma"), 1, NOW)
    assert sorted(call for call, _ in kube.calls[:2]) == ["activity", "read"]
    assert kube.calls[2:] == [("scale", {"spec": {"replicas": 1}})]
    assert ("activity", api.rfc3339(NOW)) in kube.calls


async def test_a_server_never_scaled_gets_its_replicas_on_the_object() -> None:
    kube = RecordingKube(replicas=None)
    await backend_with(kube).scale(("ns", "gemma"), 1, NOW)
    assert kube.calls[2:] == [("object", {"spec": {"replicas": 1}})]


async def test_a_server_with_replicas_enough_is_woken_by_an_annotation() -> None:
    kube = RecordingKube(replicas=2)
    await backend_with(kube).scale(("ns", "gemma"), 1, NOW)
    wake = {"metadata": {"annotations": {api.ANNOTATION_WAKE: api.rfc3339(NOW)}}}
    assert kube.calls[2:] == [("object", wake)]

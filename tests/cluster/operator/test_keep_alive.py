"""A request's keep_alive against the operator's two scale paths on the real control plane.

The gateway writes what requests asked for on the ModelServer (``lastRequestTime``, the
``corral.dev/idle-deadline`` annotation) through ``Kube``, as here. The reconcile (run by the
periodic resync, every second here) and the keep-alive timer (every second) must take the same
decision: a deadline past ``keepAliveSeconds`` keeps the server up across resyncs, and a deadline
that has passed (a ``keep_alive: 0``) lets it go to ``minReplicas`` at once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from corral_operator.api import ANNOTATION_IDLE_DEADLINE, FOREVER, rfc3339
from corral_operator.kube import Kube
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster

DEPLOYMENT = "corral-srv"
KEEP_ALIVE_SECONDS = 2
PERIOD = {
    "CORRAL_OPERATOR_RESYNC_SECONDS": "1",
    "CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS": "1",
}


def _replicas(cluster: Cluster) -> tuple[int | None, int | None]:
    """``spec.replicas`` of the ModelServer and of its Deployment (None: not there yet)."""
    server = cluster.get("modelservers", "srv") or {}
    deployments = cluster.apps.list_namespaced_deployment(cluster.ns).items
    deployment = next((d for d in deployments if d.metadata.name == DEPLOYMENT), None)
    return (
        (server.get("spec") or {}).get("replicas"),
        None if deployment is None else deployment.spec.replicas,
    )


def _serving(cluster: Cluster, *, max_keep_alive: int) -> None:
    cluster.ready_model("gemma")
    cluster.create(
        "modelservers",
        {
            "kind": "ModelServer",
            "metadata": {"name": "srv"},
            "spec": {
                "models": ["gemma"],
                "keepAliveSeconds": KEEP_ALIVE_SECONDS,
                "maxKeepAliveSeconds": max_keep_alive,
            },
        },
    )
    # A request arrives (as the gateway records one): activity first, then the scale.
    kube = Kube(cluster.api)
    kube.patch_status(
        "ModelServer", cluster.ns, "srv", {"lastRequestTime": rfc3339(datetime.now(UTC))}
    )
    kube.scale("ModelServer", cluster.ns, "srv", 1, unset=True)


def _ask(cluster: Cluster, deadline: datetime) -> None:
    """What the gateway writes after a request's keep_alive: its activity and idle deadline."""
    kube = Kube(cluster.api)
    kube.patch_status(
        "ModelServer", cluster.ns, "srv", {"lastRequestTime": rfc3339(datetime.now(UTC))}
    )
    kube.annotate("ModelServer", cluster.ns, "srv", {ANNOTATION_IDLE_DEADLINE: rfc3339(deadline)})


def _stays_up(cluster: Cluster, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert _replicas(cluster) == (1, 1), "scaled down before the requested keep_alive ran out"
        time.sleep(0.25)


@pytest.mark.parametrize("operator_env", [PERIOD], ids=["fast"])
def test_a_requested_keep_alive_outlives_keep_alive_seconds_across_resyncs(
    cluster: Cluster, operator: Operator
) -> None:
    _serving(cluster, max_keep_alive=3600)
    _ask(cluster, datetime.now(UTC) + timedelta(seconds=12))
    wait_for(lambda: _replicas(cluster) == (1, 1), what="one replica")
    # Three times keepAliveSeconds, several resyncs and timer ticks: still up.
    _stays_up(cluster, 3 * KEEP_ALIVE_SECONDS + 1)
    # Once the requested deadline passes, both paths agree that the server may go.
    wait_for(lambda: _replicas(cluster) == (0, 0), 20, "scaled to zero after the deadline")


@pytest.mark.parametrize("operator_env", [PERIOD], ids=["fast"])
def test_keep_alive_zero_undoes_an_earlier_forever(cluster: Cluster, operator: Operator) -> None:
    # maxKeepAliveSeconds -1: a request's keep_alive -1 keeps the server up with no bound ...
    _serving(cluster, max_keep_alive=-1)
    _ask(cluster, FOREVER)
    wait_for(lambda: _replicas(cluster) == (1, 1), what="one replica")
    _stays_up(cluster, 3 * KEEP_ALIVE_SECONDS + 1)
    # ... until a request's keep_alive 0 says the model may go now.
    _ask(cluster, datetime.now(UTC))
    wait_for(lambda: _replicas(cluster) == (0, 0), 10, "scaled to zero after keep_alive 0")

    # The status is the reconcile's next write after the Deployment's: it may trail it.
    def scaled_to_zero() -> bool:
        condition = cluster.condition("modelservers", "srv", "ScaledToZero") or {}
        return condition.get("status") == "True"

    wait_for(scaled_to_zero, 10, "the ScaledToZero condition")

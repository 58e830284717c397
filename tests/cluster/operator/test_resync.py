"""The periodic resync: what no watched event reports still converges within a period.

The cache claim of a Model is applied by the Model's reconcile, and nothing the operator watches
changes when the claim is deleted (claims are not watched). Only the resync timer brings it back.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster
CLAIM = "corral-cache-default"
RESYNC_SECONDS = 2


def _claim_exists(cluster: Cluster) -> bool:
    try:
        cluster.core.read_namespaced_persistent_volume_claim(CLAIM, cluster.ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _delete_claim(cluster: Cluster) -> None:
    cluster.core.delete_namespaced_persistent_volume_claim(CLAIM, cluster.ns)
    # Nothing uses the claim (no pull pod ever ran: no node), so it goes at once.
    wait_for(lambda: not _claim_exists(cluster), 20, f"claim {CLAIM} deleted")


@pytest.mark.parametrize(
    "operator_env", [{"CORRAL_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS)}], ids=["resync"]
)
def test_resync_recreates_a_deleted_cache_claim(cluster: Cluster, operator: Operator) -> None:
    cluster.ready_model("gemma")
    assert _claim_exists(cluster)
    _delete_claim(cluster)
    wait_for(lambda: _claim_exists(cluster), 10 * RESYNC_SECONDS, f"claim {CLAIM} recreated")
    model = cluster.get("models", "gemma")
    assert model is not None and model["status"]["cachePVC"] == CLAIM


@pytest.mark.parametrize("operator_env", [{"CORRAL_OPERATOR_RESYNC_SECONDS": "0"}], ids=["off"])
def test_without_resync_nothing_brings_the_claim_back(cluster: Cluster, operator: Operator) -> None:
    # The same steps with the resync off: the claim stays gone, so the test above measures the
    # resync and nothing else.
    cluster.ready_model("gemma")
    _delete_claim(cluster)
    time.sleep(4 * RESYNC_SECONDS)
    assert not _claim_exists(cluster)

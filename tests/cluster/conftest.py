"""Fixtures for the cluster tier: corral's CRDs applied once, a Cluster handle per test, and the
session's real node kept from running the pods of tests that play the kubelet."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devstack.node import NODE_NAME
from tests.cluster.operator.support import CRDS, PLAYED_TAINT, Cluster, with_taint, without_taint


@pytest.fixture(scope="session")
def crds(kubectl: Any) -> None:
    kubectl("apply", "-f", str(CRDS), check=True)
    for name in ("models.corral.dev", "modelservers.corral.dev"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s", check=True)


@pytest.fixture
def cluster(k8s_client: Any, namespace: str, crds: None) -> Cluster:
    return Cluster(k8s_client, namespace)


@pytest.fixture(autouse=True)
def real_node_runs_no_pods(request: pytest.FixtureRequest) -> Iterator[None]:
    """Most tests here play the kubelet: they write their pods' statuses themselves (a pull
    finished with a result, a pod Ready) on pods nothing runs. Once a test that asks for the
    session's real ``node`` has started it, its kubelet would run those pods and overwrite what
    the test wrote; so, for every test that does not ask for ``node``, the node carries a
    NoSchedule taint none of corral's pods tolerate, and is untainted afterwards."""
    if "node" in request.fixturenames or "k8s_client" not in request.fixturenames:
        yield
        return
    core = client.CoreV1Api(request.getfixturevalue("k8s_client"))
    try:
        taints = core.read_node(NODE_NAME).spec.taints
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        yield  # no real node (yet): nothing runs pods
        return
    core.patch_node(NODE_NAME, {"spec": {"taints": with_taint(taints, PLAYED_TAINT)}})
    try:
        yield
    finally:
        taints = core.read_node(NODE_NAME).spec.taints
        core.patch_node(NODE_NAME, {"spec": {"taints": without_taint(taints, PLAYED_TAINT)}})

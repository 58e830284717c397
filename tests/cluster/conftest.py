"""Fixtures for the cluster tier: corral's CRDs applied once, a Cluster handle per test."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.operator.support import CRDS, Cluster


@pytest.fixture(scope="session")
def crds(kubectl: Any) -> None:
    kubectl("apply", "-f", str(CRDS), check=True)
    for name in ("models.corral.dev", "modelservers.corral.dev"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s", check=True)


@pytest.fixture
def cluster(k8s_client: Any, namespace: str, crds: None) -> Cluster:
    return Cluster(k8s_client, namespace)

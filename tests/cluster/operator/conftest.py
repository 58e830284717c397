"""Fixtures for the operator's cluster tests: CRDs applied once, the operator per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for


@pytest.fixture
def operator_env() -> dict[str, str]:
    """Extra operator settings for one test (override the fixture to change them)."""
    return {}


@pytest.fixture
def operator(
    kubeconfig: Path,
    namespace: str,
    crds: None,
    tmp_path: Path,
    operator_env: dict[str, str],
    cluster: Cluster,
) -> Iterator[Operator]:
    op = Operator(kubeconfig, namespace, tmp_path, operator_env)
    op.start()
    try:
        yield op
    finally:
        # Let the operator release its finalizers before the namespace goes away.
        for model in cluster.custom.list_namespaced_custom_object(
            "corral.dev", "v1alpha1", namespace, "models"
        )["items"]:
            cluster.delete("models", model["metadata"]["name"])

        def gone() -> bool:
            cluster.finish_gc_pods()
            return not cluster.custom.list_namespaced_custom_object(
                "corral.dev", "v1alpha1", namespace, "models"
            )["items"]

        try:
            wait_for(gone, 30, "Models deleted")
        finally:
            op.stop()

"""``spec.routing.strategy`` on the real API server: CacheAware filled in when unset, only the
two strategies accepted, and the gateway's routing table reading what the API server stored."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from corral_operator.gateway.topology import build_snapshot
from tests.cluster.operator.support import Cluster

pytestmark = pytest.mark.cluster


def server(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ModelServer", "metadata": {"name": name}, "spec": {"models": ["m"], **spec}}


def test_the_strategy_defaults_to_cache_aware_and_reaches_the_routing_table(
    cluster: Cluster,
) -> None:
    cluster.create("modelservers", server("plain", {}))
    cluster.create("modelservers", server("spread", {"routing": {"strategy": "LeastInFlight"}}))
    stored = [cluster.get("modelservers", name) for name in ("plain", "spread")]
    assert stored[0] is not None and stored[0]["spec"]["routing"] == {"strategy": "CacheAware"}
    views = build_snapshot([s for s in stored if s is not None], [], []).servers
    assert views[(cluster.ns, "plain")].routing == "CacheAware"
    assert views[(cluster.ns, "spread")].routing == "LeastInFlight"


def test_an_unknown_strategy_is_rejected_naming_the_field(
    kubectl: Any, namespace: str, crds: None
) -> None:
    obj = {"apiVersion": "corral.dev/v1alpha1", **server("s", {"routing": {"strategy": "Random"}})}
    obj["metadata"]["namespace"] = namespace
    result = kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(obj))
    assert result.returncode != 0
    assert "spec.routing.strategy" in result.stderr

"""``spec.priority`` on the real API server: interactive filled in as the default class, the
classes, shares and key digests checked by the schema, and the gateway's routing table reading
what the API server stored."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml

from corral_operator.gateway.priority import PriorityConfig
from corral_operator.gateway.topology import build_snapshot
from tests.cluster.operator.support import Cluster

pytestmark = pytest.mark.cluster

DIGEST = hashlib.sha256(b"batch-job-key").hexdigest()


def server(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ModelServer", "metadata": {"name": name}, "spec": {"models": ["m"], **spec}}


def test_the_priority_spec_reaches_the_routing_table(cluster: Cluster) -> None:
    priority = {
        "agingSeconds": 20,
        "reservedSlots": 1,
        "shares": {"batch": 0.75},
        "apiKeys": [{"sha256": DIGEST, "class": "batch"}],
    }
    cluster.create("modelservers", server("prio", {"priority": priority}))
    stored = cluster.get("modelservers", "prio")
    assert stored is not None
    assert stored["spec"]["priority"]["defaultClass"] == "interactive"
    view = build_snapshot([stored], [], []).servers[(cluster.ns, "prio")]
    assert view.priority == PriorityConfig(
        default="interactive", aging_s=20.0, keys={DIGEST: "batch"}
    )


@pytest.mark.parametrize(
    ("priority", "field"),
    [
        ({"defaultClass": "urgent"}, "spec.priority.defaultClass"),
        ({"shares": {"batch": 0}}, "spec.priority.shares.batch"),
        ({"reservedSlots": -1}, "spec.priority.reservedSlots"),
        ({"shares": {"batch": 1.5}}, "spec.priority.shares.batch"),
        ({"apiKeys": [{"sha256": "not-a-digest", "class": "batch"}]}, "spec.priority.apiKeys"),
        ({"apiKeys": [{"sha256": DIGEST, "class": "urgent"}]}, "spec.priority.apiKeys"),
    ],
)
def test_bad_priority_settings_are_rejected_naming_the_field(
    kubectl: Any, namespace: str, crds: None, priority: dict[str, Any], field: str
) -> None:
    obj = {"apiVersion": "corral.dev/v1alpha1", **server("s", {"priority": priority})}
    obj["metadata"]["namespace"] = namespace
    result = kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(obj))
    assert result.returncode != 0
    assert field in result.stderr

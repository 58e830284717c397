"""The routing table built from ModelServers, Models and Endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator import api
from corral_operator.gateway.listing import merge_ps, ollama_tags, openai_models
from corral_operator.gateway.topology import build_snapshot, ready_addresses, static_snapshot

pytestmark = pytest.mark.unit


def server(
    name: str,
    models: list[str],
    *,
    namespace: str = "ns",
    replicas: int | None = None,
    served: dict[str, str] | None = None,
    ready_message: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"models": models, "minReplicas": 0, "maxReplicas": 2}
    if replicas is not None:
        spec["replicas"] = replicas
    status: dict[str, Any] = {
        "models": [{"model": m, "name": n} for m, n in (served or {}).items()]
    }
    if ready_message is not None:
        status["conditions"] = [
            {"type": "Ready", "status": "False", "reason": "Starting", "message": ready_message}
        ]
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec, "status": status}


def model(name: str, served: str, *, ready: bool = True, namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "status": {
            "name": served,
            "digest": "sha256:" + "a" * 64,
            "sizeBytes": 253113024,
            "family": "gemma3",
            "parameterSize": "268.10M",
            "quantization": "Q4_K_M",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
        },
    }


def endpoints(service: str, ips: list[str], namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": service},
        "subsets": [
            {
                "addresses": [{"ip": ip} for ip in ips],
                "notReadyAddresses": [{"ip": "10.0.0.99"}],
                "ports": [{"port": 11434, "name": "http"}],
            }
        ],
    }


def test_routes_served_and_resource_names_to_the_server() -> None:
    snap = build_snapshot(
        [server("small", ["gemma3-270m"], replicas=1)],
        [model("gemma3-270m", "gemma3:270m")],
        [endpoints("corral-small", ["10.0.0.2", "10.0.0.1"])],
    )
    (entry,) = snap.lookup("Gemma3:270m")
    assert entry.server == ("ns", "small")
    assert snap.lookup("gemma3-270m") == (entry,)
    assert snap.lookup("other") == ()
    view = snap.servers[("ns", "small")]
    assert view.endpoints == ("10.0.0.1:11434", "10.0.0.2:11434")
    assert view.serving == view.endpoints


def test_a_server_asked_for_zero_replicas_takes_no_new_requests() -> None:
    snap = build_snapshot(
        [server("small", ["m"], replicas=0)],
        [model("m", "m:1")],
        [endpoints("corral-small", ["10.0.0.1"])],
    )
    view = snap.servers[("ns", "small")]
    assert view.endpoints == ("10.0.0.1:11434",)
    assert view.serving == ()


def test_unset_replicas_mean_min_replicas() -> None:
    snap = build_snapshot([server("s", ["m"])], [model("m", "m:1")], [])
    assert snap.servers[("ns", "s")].desired == 0


def test_status_message_of_an_unready_server() -> None:
    snap = build_snapshot(
        [server("s", ["m"], replicas=1, ready_message="0/1 replicas ready")], [], []
    )
    assert snap.servers[("ns", "s")].status_message == "0/1 replicas ready"


def test_listing_has_ready_models_only() -> None:
    snap = build_snapshot(
        [server("a", ["m1", "m2"]), server("b", ["m1"])],
        [model("m1", "one:1b"), model("m2", "two:2b", ready=False), model("lonely", "x:1")],
        [],
    )
    assert [e.name for e in snap.listed()] == ["one:1b"]
    tags = ollama_tags(snap.listed())["models"]
    assert tags[0]["name"] == "one:1b"
    assert tags[0]["size"] == 253113024
    assert tags[0]["digest"] == "a" * 64
    assert tags[0]["details"]["quantization_level"] == "Q4_K_M"
    data = openai_models(snap.listed())
    assert data["object"] == "list"
    assert data["data"][0]["id"] == "one:1b"
    assert data["data"][0]["created"] == 1735689600


def test_status_models_name_wins_over_model_status() -> None:
    snap = build_snapshot(
        [server("s", ["m"], served={"m": "served:tag"})], [model("m", "other:tag")], []
    )
    assert snap.lookup("served:tag")
    assert not snap.lookup("other:tag")


def test_servers_being_deleted_are_not_routed() -> None:
    doomed = server("s", ["m"])
    doomed["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert build_snapshot([doomed], [model("m", "m:1")], []).lookup("m:1") == ()


def test_ready_addresses_prefer_the_runtime_port() -> None:
    eps = {
        "subsets": [
            {
                "addresses": [{"ip": "10.1.0.1"}],
                "ports": [{"port": 9090}, {"port": 11434}],
            }
        ]
    }
    assert ready_addresses(eps) == ("10.1.0.1:11434",)
    assert ready_addresses(None) == ()


def test_static_servers_are_ready_and_not_scalable() -> None:
    snap = static_snapshot({"local": (["gemma3:270m"], ["127.0.0.1:9"])})
    (entry,) = snap.lookup("gemma3:270m")
    view = snap.servers[entry.server]
    assert view.serving == ("127.0.0.1:9",)
    assert not view.scalable


def test_ps_merges_every_pod() -> None:
    merged = merge_ps(
        [
            {"models": [{"name": "a", "expires_at": "2025-01-01T00:00:00Z"}]},
            {"models": [{"name": "b", "expires_at": "2025-01-02T00:00:00Z"}]},
            {},
        ]
    )
    assert [m["name"] for m in merged["models"]] == ["b", "a"]


def test_pods_not_ready_yet_are_listed_as_starting() -> None:
    eps = {
        "metadata": {"namespace": "ns", "name": api.server_child_name("s")},
        "subsets": [
            {
                "addresses": [{"ip": "10.1.0.1"}],
                "notReadyAddresses": [{"ip": "10.1.0.2"}],
                "ports": [{"port": 11434}],
            }
        ],
    }
    snap = build_snapshot([server("s", ["m"], replicas=2)], [model("m", "m:1")], [eps])
    view = snap.servers[("ns", "s")]
    assert view.endpoints == ("10.1.0.1:11434",)
    assert view.starting == ("10.1.0.2:11434",)

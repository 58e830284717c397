"""Choosing where ``corral run`` connects: explicit hosts first, then the gateway's addresses."""

from __future__ import annotations

import pytest

from corral_operator.cli.gateway import explicit_host, gateway_candidates
from corral_operator.settings import CliSettings

pytestmark = pytest.mark.unit

SERVICE = {
    "metadata": {"name": "corral-gateway"},
    "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 11434}]},
}
ENDPOINTS = {
    "subsets": [
        {
            "addresses": [{"ip": "10.244.0.7"}, {"ip": "10.244.1.3"}],
            "notReadyAddresses": [{"ip": "10.244.2.9"}],
            "ports": [{"name": "http", "port": 8000}],
        }
    ]
}


def test_flag_wins_over_environment() -> None:
    # model_construct: these values only, whatever the test's own environment holds.
    env = CliSettings.model_construct(corral_host="a:1", ollama_host="b:2")
    assert explicit_host("c", env) == "http://c:11434"
    assert explicit_host(None, env) == "http://a:1"
    assert explicit_host(None, CliSettings.model_construct(ollama_host="b:2")) == "http://b:2"
    assert explicit_host(None, CliSettings.model_construct(corral_host=" ", ollama_host="")) is None


def test_cluster_ip_first_then_ready_pods_only() -> None:
    assert gateway_candidates(SERVICE, ENDPOINTS) == [
        "http://10.96.0.20:11434",
        "http://10.244.0.7:8000",
        "http://10.244.1.3:8000",
    ]


def test_headless_service_and_no_endpoints() -> None:
    headless = {"spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 11434}]}}
    assert gateway_candidates(headless, ENDPOINTS) == [
        "http://10.244.0.7:8000",
        "http://10.244.1.3:8000",
    ]
    assert gateway_candidates(SERVICE, None) == ["http://10.96.0.20:11434"]

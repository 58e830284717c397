"""Choosing where ``corral run`` connects: explicit hosts first, then the gateway's addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_operator.cli import gateway
from corral_operator.cli.cluster import CommandError
from corral_operator.cli.gateway import (
    LOCAL_SERVER,
    ServerChoice,
    choose_server,
    explicit_host,
    gateway_candidates,
)
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
    assert explicit_host(" :8080", env) == "http://127.0.0.1:8080"  # Ollama's ``:port``


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


class Probe:
    """A probe answering ``result`` that counts its calls (the rule must not probe needlessly)."""

    def __init__(self, result: bool) -> None:
        self.result, self.calls = result, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.result


def choose(
    flag: str | None = None,
    env: CliSettings | None = None,
    *,
    cluster_flags: bool = False,
    local: Probe | None = None,
    kube: Probe | None = None,
) -> ServerChoice:
    return choose_server(
        flag,
        env or CliSettings.model_construct(),
        cluster_flags=cluster_flags,
        local_answers=local or Probe(True),
        kubeconfig_loads=kube or Probe(True),
    )


def test_explicit_host_wins_without_probing_anything() -> None:
    local, kube = Probe(True), Probe(True)
    env = CliSettings.model_construct(ollama_host=":8080")
    assert choose(None, env, cluster_flags=True, local=local, kube=kube) == ServerChoice(
        "http://127.0.0.1:8080"
    )
    assert choose("http://h:1", cluster_flags=True, local=local, kube=kube).url == "http://h:1"
    assert (local.calls, kube.calls) == (0, 0)


def test_a_cluster_flag_means_the_gateway_even_with_a_local_server() -> None:
    local = Probe(True)
    choice = choose(cluster_flags=True, local=local)
    assert choice.gateway and choice.url is None
    assert local.calls == 0


def test_a_local_server_comes_before_a_kubeconfig() -> None:
    kube = Probe(True)
    choice = choose(local=Probe(True), kube=kube)
    assert choice == ServerChoice(LOCAL_SERVER) and not choice.gateway
    assert kube.calls == 0


def test_no_local_server_and_a_kubeconfig_means_the_gateway() -> None:
    assert choose(local=Probe(False), kube=Probe(True)).gateway


def test_nothing_there_says_how_to_start_one() -> None:
    with pytest.raises(CommandError, match=r"no server at 127\.0\.0\.1:11434.*corral serve"):
        choose(local=Probe(False), kube=Probe(False))


def test_run_with_no_server_and_no_cluster_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole rule through ``corral run``: nothing at the local address (a free port stands
    in for 11434, which a developer's own server may hold) and no kubeconfig."""
    from corral_runtime import cli
    from devstack.controlplane import free_port

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "CORRAL_HOST", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(gateway, "LOCAL_SERVER", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["run", "gemma3:270m", "hi"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"Error: {gateway.NO_SERVER}\n"

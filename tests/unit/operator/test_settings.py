from __future__ import annotations

import os

import pytest

from corral_operator.settings import CliSettings, KubeClientSettings, OperatorSettings

pytestmark = pytest.mark.unit


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_OPERATOR_NAMESPACES", "a, b")
    monkeypatch.setenv(
        "CORRAL_OPERATOR_CACHE_PROFILES", '{"fast": {"size": "5Gi", "storageClassName": "ssd"}}'
    )
    monkeypatch.setenv("CORRAL_OPERATOR_RUNTIME_IMAGE", "registry.local/corral:1")
    settings = OperatorSettings()
    assert settings.namespaces == ["a", "b"]
    fast = settings.cache_profiles["fast"]
    assert (fast.size, fast.storage_class_name, fast.access_mode) == ("5Gi", "ssd", "ReadWriteMany")
    assert settings.runtime_image == "registry.local/corral:1"


def test_defaults() -> None:
    settings = OperatorSettings()
    assert settings.finalizer == "corral.dev/finalizer"
    assert "default" in settings.cache_profiles
    assert settings.gpu_tolerations[0]["key"] == "nvidia.com/gpu"


def test_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = OperatorSettings()
    assert (defaults.resync_seconds, defaults.pull_progress_seconds) == (60.0, 5.0)
    monkeypatch.setenv("CORRAL_OPERATOR_RESYNC_SECONDS", "0")  # 0: no resync
    assert OperatorSettings().resync_seconds == 0
    monkeypatch.setenv("CORRAL_OPERATOR_RESYNC_SECONDS", "-1")
    with pytest.raises(ValueError):
        OperatorSettings()


KUBE_VARIABLES = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
CLI_VARIABLES = ("CORRAL_HOST", "OLLAMA_HOST", "CORRAL_GATEWAY_NAMESPACE", "CORRAL_API_KEY")


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the client variables set, whatever the shell running the tests has."""
    for name in (*KUBE_VARIABLES, *CLI_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("kubeconfig", "service_host", "in_pod", "paths"),
    [
        (None, None, False, []),
        ("/etc/k/one", "10.96.0.1", True, ["/etc/k/one"]),
        # A path list in order, empty entries skipped.
        (os.pathsep.join(["/a", "", "/b", ""]), None, False, ["/a", "/b"]),
        # Empty is not unset: the operator's start-up hands an empty KUBECONFIG to the client.
        ("", "", False, []),
    ],
)
def test_kube_client_reads_its_variables_as_set(
    kubeconfig: str | None,
    service_host: str | None,
    in_pod: bool,
    paths: list[str],
    bare_environment: pytest.MonkeyPatch,
) -> None:
    for name, value in (("KUBECONFIG", kubeconfig), ("KUBERNETES_SERVICE_HOST", service_host)):
        if value is not None:
            bare_environment.setenv(name, value)
    kube = KubeClientSettings()
    assert (kube.kubeconfig, kube.service_host) == (kubeconfig, service_host)
    assert kube.in_pod is in_pod
    assert kube.kubeconfig_paths == paths


def test_variable_names_are_exact(bare_environment: pytest.MonkeyPatch) -> None:
    # As os.environ.get read them: another case, or a field's own name, is not the variable.
    lower = [name.lower() for name in (*KUBE_VARIABLES, *CLI_VARIABLES)]
    for name in (*lower, "service_host", "ollama_host", "gateway_namespace", "api_key"):
        bare_environment.setenv(name, "x")
    assert KubeClientSettings().model_dump() == {"kubeconfig": None, "service_host": None}
    assert set(CliSettings().model_dump().values()) == {None}


def test_operator_settings_carry_the_kube_client(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("KUBECONFIG", "/etc/k/operator")
    assert OperatorSettings().kube_client.kubeconfig == "/etc/k/operator"


def test_cli_unset(bare_environment: pytest.MonkeyPatch) -> None:
    cli = CliSettings()
    assert (cli.corral_host, cli.ollama_host, cli.gateway_namespace, cli.api_key) == (
        None,
        None,
        None,
        None,
    )
    assert cli.host is None


def test_cli_reads_its_variables(bare_environment: pytest.MonkeyPatch) -> None:
    bare_environment.setenv("CORRAL_HOST", "a:1")
    bare_environment.setenv("OLLAMA_HOST", "b:2")
    bare_environment.setenv("CORRAL_GATEWAY_NAMESPACE", "corral")
    bare_environment.setenv("CORRAL_API_KEY", "secret")
    cli = CliSettings()
    assert (cli.corral_host, cli.ollama_host) == ("a:1", "b:2")
    assert (cli.gateway_namespace, cli.api_key) == ("corral", "secret")


@pytest.mark.parametrize(
    ("corral_host", "ollama_host", "host"),
    [
        ("a:1", "b:2", "a:1"),  # CORRAL_HOST wins
        (None, "b:2", "b:2"),
        ("", "b:2", "b:2"),  # empty and blank count as unset
        ("  ", "b:2", "b:2"),
        ("a:1", "", "a:1"),
        (" ", "", None),
    ],
)
def test_corral_host_wins_over_ollama_host(
    corral_host: str | None,
    ollama_host: str,
    host: str | None,
    bare_environment: pytest.MonkeyPatch,
) -> None:
    if corral_host is not None:
        bare_environment.setenv("CORRAL_HOST", corral_host)
    bare_environment.setenv("OLLAMA_HOST", ollama_host)
    assert CliSettings().host == host


def test_empty_cli_defaults_stay_empty(bare_environment: pytest.MonkeyPatch) -> None:
    # "" is what the flags' defaults were: `or corral-system` and `if api_key` read it as unset.
    bare_environment.setenv("CORRAL_GATEWAY_NAMESPACE", "")
    bare_environment.setenv("CORRAL_API_KEY", "")
    cli = CliSettings()
    assert (cli.gateway_namespace, cli.api_key) == ("", "")

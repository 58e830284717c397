"""How the operator logs in to its cluster: its pod's service account, else the kubeconfig."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.handlers import startup
from corral_operator.settings import KubeClientSettings

pytestmark = pytest.mark.unit


def kube(kubeconfig: str | None, service_host: str | None) -> KubeClientSettings:
    # Both values given: the test's own environment plays no part.
    return KubeClientSettings(KUBECONFIG=kubeconfig, KUBERNETES_SERVICE_HOST=service_host)


@pytest.mark.parametrize(
    ("kubeconfig", "service_host", "service_account"),
    [
        (None, "10.96.0.1", True),
        ("", "10.96.0.1", True),  # an empty KUBECONFIG names no file
        ("/etc/k/config", "10.96.0.1", False),  # told of a kubeconfig: it wins, even in a pod
        (None, None, False),
        (None, "", False),
    ],
)
def test_service_account_in_a_pod_told_of_no_kubeconfig(
    kubeconfig: str | None, service_host: str | None, service_account: bool
) -> None:
    assert startup.uses_service_account(kube(kubeconfig, service_host)) is service_account


@pytest.mark.parametrize("kubeconfig", [None, "", "/a:/b"])
def test_the_kubeconfig_goes_to_the_client_as_set(
    kubeconfig: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None: the client's default file; "" and path lists: the client's own reading of them.
    given: dict[str, Any] = {}

    def new_client_from_config(config_file: str | None) -> object:
        given["config_file"] = config_file
        return object()

    monkeypatch.setattr(startup.k8s_config, "new_client_from_config", new_client_from_config)
    startup.api_client(kube(kubeconfig, None))
    assert given == {"config_file": kubeconfig}

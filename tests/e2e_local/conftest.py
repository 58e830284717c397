"""The e2e tier on the local cluster: the session's control plane and real node (``node``), the
chart helm-installed on it once for this package (``stack``: the operator and the gateway run as
pods from the images built here, the gateway behind a NodePort), a fresh namespace per test,
real runtime pods serving the bundled model.

The release is uninstalled when the package's last test ends, so no operator of it is left
watching every namespace while other tests run. Teardown is checked, not assumed: after the
release goes, none of its pods and no runtime pod may remain.

The CRDs are applied from crds/ with kubectl, as the cluster tier does on the same control plane,
and the release installs none (``crds.install: false``): CRDs someone else created are not the
release's to adopt, and the cluster tier's may already be there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devstack.controlplane import ROOT, ControlPlane
from devstack.node import Node
from devstack.stack import Stack, free_node_port
from tests.e2e_local.support import brought_down_cleanly

# The session gateway: a generous hold deadline (a cold pod loads the model on 2 busy cores),
# activity written every second so the keep-alive sees it quickly, and a load target high enough
# that ten requests on one ready pod ask for no second one. What the chart has a value for is set
# through that value, the rest through ``gateway.extraEnv``.
GATEWAY_VALUES = {"holdDeadlineSeconds": 180, "holdQueueSize": 16, "targetInFlightPerPod": 16}
GATEWAY_ENV = {
    "CORRAL_GATEWAY_ACTIVITY_INTERVAL_SECONDS": "1",
    "CORRAL_GATEWAY_HEARTBEAT_SECONDS": "1",
}
# The operator checks idle servers every 2 s (not 10), so scale-to-zero shows within a test.
OPERATOR_ENV = {"CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS": "2"}


def env_list(env: dict[str, str]) -> list[dict[str, str]]:
    """Settings as the chart's ``extraEnv`` (a container's EnvVar list)."""
    return [{"name": name, "value": value} for name, value in env.items()]


def session_values() -> dict[str, Any]:
    return {
        "crds": {"install": False},
        "gateway": {**GATEWAY_VALUES, "extraEnv": env_list(GATEWAY_ENV)},
        "operator": {"extraEnv": env_list(OPERATOR_ENV)},
    }


@pytest.fixture(scope="package")
def stack(
    control_plane: ControlPlane, node: Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    running = Stack(state, plane=control_plane, node=node)
    running.kubectl("apply", "-f", str(ROOT / "crds"))
    for crd in ("models.corral.dev", "modelservers.corral.dev"):
        running.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    running.up(gateway_port=free_node_port(), values=session_values())
    with brought_down_cleanly(running, lambda: _show_logs(running)):
        yield running


def _show_logs(stack: Stack) -> None:
    """The operator's and the gateway's logs, shown by pytest when the session's last test
    failed (every pod's log is saved under the stack's logs/pods/ by ``down``)."""
    for component in ("operator", "gateway"):
        print(f"==== {component}\n{stack.component_logs(component)[-4000:]}")


@pytest.fixture
def gateway(stack: Stack) -> str:
    return stack.gateway_url

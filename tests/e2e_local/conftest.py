"""The e2e tier on the local stack: one stack (control plane, node agent, operator, gateway) per
session, a fresh namespace per test, real runtime pods serving the bundled model.

Teardown is checked, not assumed: after the stack goes down, no process it started and no
network namespace of its node agent may remain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.controlplane import ControlPlane, free_port
from tests.e2e_local.support import brought_down_cleanly
from tests.support.stack import Stack

# The session gateway: a generous hold deadline (a cold pod loads the model on 2 busy cores),
# activity written every second so the keep-alive sees it quickly, and a load target high enough
# that ten requests on one ready pod ask for no second one.
GATEWAY_ENV = {
    "CORRAL_GATEWAY_HOLD_DEADLINE_SECONDS": "180",
    "CORRAL_GATEWAY_HOLD_QUEUE_SIZE": "16",
    "CORRAL_GATEWAY_TARGET_IN_FLIGHT_PER_POD": "16",
    "CORRAL_GATEWAY_ACTIVITY_INTERVAL_SECONDS": "1",
    "CORRAL_GATEWAY_HEARTBEAT_SECONDS": "1",
}


@pytest.fixture(scope="session")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    running = Stack(state, plane=control_plane)
    running.up(gateway_port=free_port(), gateway_env=GATEWAY_ENV)
    with brought_down_cleanly(running, lambda: _keep_logs(state)):
        yield running


def _keep_logs(state: Path) -> None:
    """Copy the pods' logs next to the components' (which outlive ``down``) for a failed run."""
    pods = state / "node" / "pods"
    target = state / "logs" / "pods"
    if not pods.is_dir():
        return
    for log in pods.glob("*/logs/*.log"):
        copy = target / log.parent.parent.name / log.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(log.read_bytes())


@pytest.fixture
def gateway(stack: Stack) -> str:
    return stack.gateway_url

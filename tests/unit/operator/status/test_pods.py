from __future__ import annotations

from typing import Any

import pytest

from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.settings import OperatorSettings
from corral_operator.status.pods import PodTrouble, pod_trouble, pods_trouble
from tests.unit.operator.factories import GEMMA_STATUS, model, server
from tests.unit.operator.planners.test_modelserver import NOW

pytestmark = pytest.mark.unit

# As the scheduler of Kubernetes 1.20 reports a pod asking for more GPUs than any node has.
UNSCHEDULABLE = {
    "metadata": {"name": "corral-srv-a"},
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ],
    },
}


def _container(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "corral-srv-b"}, "status": {"containerStatuses": [fields]}}


# As the kubelet reports a container the kernel killed for its memory limit, between restarts.
OOM_LOOP = _container(
    name="runtime",
    ready=False,
    restartCount=3,
    state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
    lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
)


def test_unschedulable_pod_says_why() -> None:
    trouble = pod_trouble(UNSCHEDULABLE)
    assert trouble == PodTrouble(
        "Unschedulable",
        "pod corral-srv-a cannot be scheduled: "
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
    )


def test_oom_killed_wins_over_the_back_off_it_causes() -> None:
    trouble = pod_trouble(OOM_LOOP)
    assert trouble is not None and trouble.reason == "OOMKilled"
    assert "corral-srv-b" in trouble.message and "restarted 3 times" in trouble.message
    just_killed = _container(
        name="runtime", ready=False, state={"terminated": {"reason": "OOMKilled"}}
    )
    assert pod_trouble(just_killed).reason == "OOMKilled"  # type: ignore[union-attr]


def test_a_recovered_container_and_a_starting_one_are_no_trouble() -> None:
    recovered = _container(
        name="runtime",
        ready=True,
        state={"running": {}},
        lastState={"terminated": {"reason": "OOMKilled"}},
    )
    assert pod_trouble(recovered) is None
    starting = _container(
        name="runtime", ready=False, state={"waiting": {"reason": "ContainerCreating"}}
    )
    assert pod_trouble(starting) is None
    leaving = {
        **UNSCHEDULABLE,
        "metadata": {"name": "x", "deletionTimestamp": "2024-01-01T00:00:00Z"},
    }
    assert pod_trouble(leaving) is None


def test_other_waiting_reasons_are_left_to_starting() -> None:
    # A missing Secret or image is not the spec's resources: the pods say it, Ready stays
    # Starting as before.
    refused = _container(
        name="runtime",
        ready=False,
        state={"waiting": {"reason": "CreateContainerConfigError", "message": "secret not found"}},
    )
    assert pod_trouble(refused) is None


def test_first_trouble_by_pod_name() -> None:
    assert pods_trouble([OOM_LOOP, UNSCHEDULABLE]).reason == "Unschedulable"  # type: ignore[union-attr]
    assert pods_trouble([]) is None


def _ready(plan: Any) -> tuple[str, str, str]:
    cond = next(c for c in plan.conditions if c.type == "Ready")
    return cond.status, cond.reason, cond.message


def test_server_ready_condition_names_the_pods_trouble() -> None:
    ready_model = model(status=dict(GEMMA_STATUS))
    starting = {"status": {"replicas": 1, "readyReplicas": 0}}
    settings = OperatorSettings()
    srv = server(minReplicas=1)
    plan = plan_modelserver(srv, {"gemma": ready_model}, starting, settings, NOW, [OOM_LOOP])
    assert _ready(plan)[:2] == ("False", "OOMKilled")
    plan = plan_modelserver(srv, {"gemma": ready_model}, starting, settings, NOW, [UNSCHEDULABLE])
    assert _ready(plan)[:2] == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in _ready(plan)[2]
    plan = plan_modelserver(srv, {"gemma": ready_model}, starting, settings, NOW, [])
    assert _ready(plan)[:2] == ("False", "Starting")
    # Once a replica is ready the server is available, whatever another pod does.
    available = {"status": {"replicas": 2, "readyReplicas": 1}}
    plan = plan_modelserver(srv, {"gemma": ready_model}, available, settings, NOW, [OOM_LOOP])
    assert _ready(plan)[:2] == ("True", "Available")

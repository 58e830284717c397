"""Pure: a pod's status from the observed state of its containers.

The phase follows the kubelet's rules (init containers first; ``Always`` keeps a pod Running while
its containers restart; all-zero exits under Never/OnFailure mean Succeeded, any failure under
Never means Failed), and conditions are PodScheduled/Initialized/ContainersReady/Ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str
    started_at: datetime
    finished_at: datetime

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": timestamp(self.started_at),
            "finishedAt": timestamp(self.finished_at),
        }
        if self.message:
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class ContainerView:
    """What is known of one container at one moment.

    Exactly one of: ``running_since`` set (running), ``terminated`` set (stopped for good or
    until restarted), otherwise waiting with ``waiting_reason``.
    """

    name: str
    image: str
    running_since: datetime | None = None
    terminated: Terminated | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False

    def as_dict(self) -> dict[str, Any]:
        if self.running_since is not None:
            state: dict[str, Any] = {"running": {"startedAt": timestamp(self.running_since)}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated.as_dict()}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.as_dict()} if self.last_terminated else {}
            ),
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
        }


def init_phase(restart_policy: str, inits: Sequence[ContainerView]) -> str | None:
    """Failed / Pending while init containers decide the pod, None once they all succeeded."""
    for view in inits:
        if view.terminated is not None and view.terminated.exit_code == 0:
            continue
        failed = view.terminated is not None or view.last_terminated is not None
        if failed and restart_policy == "Never":
            return "Failed"
        return "Pending"
    return None


def pod_phase(
    restart_policy: str, inits: Sequence[ContainerView], containers: Sequence[ContainerView]
) -> str:
    early = init_phase(restart_policy, inits)
    if early is not None:
        return early
    running = stopped = succeeded = waiting = 0
    for view in containers:
        if view.running_since is not None:
            running += 1
        elif view.terminated is not None:
            stopped += 1
            succeeded += view.terminated.exit_code == 0
        elif view.last_terminated is not None:
            stopped += 1  # waiting to restart after a termination
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(kind: str, ok: bool, since: str, reason: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason and not ok:
        out["reason"] = reason
    return out


def pod_status(
    pod: Mapping[str, Any],
    inits: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    pod_ip: str,
    host_ip: str,
    start_time: datetime,
    previous: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The full ``status`` to write through pods/status.

    ``previous`` is the status last written (or the pod's current one): a condition keeps its
    lastTransitionTime while its value does not change.
    """
    spec = pod.get("spec", {})
    policy = spec.get("restartPolicy", "Always")
    phase = pod_phase(policy, inits, containers)
    moment = timestamp(now or datetime.now(UTC))
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}

    def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        before = old.get(kind)
        wanted = "True" if ok else "False"
        since = (
            before.get("lastTransitionTime") if before and before.get("status") == wanted else None
        ) or moment
        return _condition(kind, ok, since, reason)

    initialized = init_phase(policy, inits) is None
    containers_ready = bool(containers) and all(v.ready for v in containers) and phase == "Running"
    gates = [g["conditionType"] for g in spec.get("readinessGates") or []]
    gates_ok = all(old.get(g, {}).get("status") == "True" for g in gates)
    conditions = [
        cond("Initialized", initialized, "ContainersNotInitialized"),
        cond(
            "Ready",
            containers_ready and gates_ok,
            "ContainersNotReady" if not containers_ready else "ReadinessGatesNotReady",
        ),
        cond("ContainersReady", containers_ready, "ContainersNotReady"),
        cond("PodScheduled", True),
    ]
    # Conditions owned by others (readiness gates, anything a controller set) are kept as is.
    mine = {c["type"] for c in conditions}
    conditions += [c for kind, c in old.items() if kind not in mine]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}] if pod_ip else [],
        "startTime": timestamp(start_time),
        "containerStatuses": [v.as_dict() for v in containers],
    }
    if inits:
        status["initContainerStatuses"] = [v.as_dict() for v in inits]
    return status

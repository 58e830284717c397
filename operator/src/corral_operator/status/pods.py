"""Why a ModelServer's runtime pods are not ready, read from what the scheduler and the kubelet
report on the pods: a pod the scheduler cannot place (``Insufficient nvidia.com/gpu``) or a
container killed for exceeding its memory limit, the two a ModelServer's own spec causes and
fixes (``resources``). The ModelServer's ``Ready`` condition carries it, so that
``kubectl get modelserver`` says what a look at the pods would."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OOM_KILLED = "OOMKilled"
UNSCHEDULABLE = "Unschedulable"


@dataclass(frozen=True, slots=True)
class PodTrouble:
    """A reason (a condition's CamelCase reason) and a message naming the pod."""

    reason: str
    message: str


def _container_trouble(pod: str, status: Mapping[str, Any]) -> PodTrouble | None:
    name = status.get("name", "")
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = state.get("terminated") or {}
    restarts = int(status.get("restartCount") or 0)
    if OOM_KILLED in (terminated.get("reason"), last.get("reason")) and not status.get("ready"):
        return PodTrouble(
            OOM_KILLED,
            f"container {name} of pod {pod} was killed for exceeding its memory limit "
            f"(restarted {restarts} times); raise spec.resources.memory",
        )
    return None


def pod_trouble(pod: Mapping[str, Any]) -> PodTrouble | None:
    """What keeps ``pod`` from becoming ready that waiting will not fix, if anything."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    name = str(meta.get("name", ""))
    for cond in status.get("conditions") or ():
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == UNSCHEDULABLE
        ):
            return PodTrouble(
                UNSCHEDULABLE, f"pod {name} cannot be scheduled: {cond.get('message', '')}"
            )
    for container in (
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ):
        found = _container_trouble(name, container)
        if found:
            return found
    return None


def pods_trouble(pods: Iterable[Mapping[str, Any]]) -> PodTrouble | None:
    """The first trouble among ``pods`` (by pod name, so that the condition is stable)."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
        found = pod_trouble(pod)
        if found:
            return found
    return None

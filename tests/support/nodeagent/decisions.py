"""Pure decisions of the node agent: restarts and their back-off, probe bookkeeping, and which
pod workers to start, stop or finalize given the pods bound to the node."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_BACKOFF_SECONDS = 300.0


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def init_should_restart(restart_policy: str, exit_code: int) -> bool:
    """Init containers run to success; under Always they are retried like OnFailure."""
    return exit_code != 0 and restart_policy != "Never"


def backoff_seconds(crashes: int, base: float, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """Delay before the next start after ``crashes`` consecutive terminations (kubelet-style)."""
    if crashes <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (crashes - 1)))


def crashes_after_run(
    previous_crashes: int, ran_seconds: float, base: float, cap: float = MAX_BACKOFF_SECONDS
) -> int:
    """A container that stayed up well past the longest back-off starts counting afresh."""
    if ran_seconds > 2 * max(cap, base):
        return 1
    return previous_crashes + 1


# -- probes --------------------------------------------------------------------------------------


@dataclass
class ProbeTracker:
    """Thresholds and timing of one probe (readiness, liveness or startup) of one container."""

    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    healthy: bool = False
    successes: int = 0
    failures: int = 0
    next_due: float = 0.0

    @classmethod
    def from_spec(cls, probe: Mapping[str, Any], started: float, healthy: bool) -> ProbeTracker:
        """``healthy`` is the state before the first probe: False for readiness/startup."""
        delay = float(probe.get("initialDelaySeconds", 0))
        return cls(
            initial_delay=delay,
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
            healthy=healthy,
            next_due=started + delay,
        )

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, ok: bool, now: float) -> None:
        self.next_due = now + self.period
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold:
                self.healthy = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold:
                self.healthy = False


# -- pod workers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundPod:
    """What the sync plan needs to know of a pod bound to the node."""

    uid: str
    terminating: bool
    finished: bool  # phase Succeeded/Failed: nothing more to run


@dataclass
class SyncPlan:
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop the processes, then finalize
    finalize: list[str] = field(default_factory=list)  # stopped and terminating: delete now
    forget: list[str] = field(default_factory=list)  # gone from the API: stop, then drop


def plan_sync(bound: Iterable[BoundPod], workers: Mapping[str, bool]) -> SyncPlan:
    """Compare the pods bound to the node with the workers running them.

    ``workers`` maps a pod uid to whether its worker has finished stopping.
    """
    plan = SyncPlan()
    seen: set[str] = set()
    for pod in bound:
        seen.add(pod.uid)
        has_worker = pod.uid in workers
        if pod.terminating:
            if has_worker and not workers[pod.uid]:
                plan.stop.append(pod.uid)
            else:
                plan.finalize.append(pod.uid)
        elif not has_worker and not pod.finished:
            plan.start.append(pod.uid)
    plan.forget = sorted(uid for uid in workers if uid not in seen)
    return plan

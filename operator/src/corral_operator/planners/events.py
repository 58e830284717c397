"""Which Kubernetes Events tell a Model's or a ModelServer's story: decided from the object as it
was before a reconcile and what the reconcile decides now, so that ``kubectl describe`` shows
each transition once (a pull started, reached a milestone, finished or failed; a server scaled,
became ready, or hit trouble) and a resync that changes nothing posts nothing.

Every function here is pure; the handlers post what they return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from corral_operator import api
from corral_operator.planners.replicas import idle_deadline, server_activity, server_replicas
from corral_operator.status.conditions import Condition, find_condition
from corral_operator.status.pods import OOM_KILLED, UNSCHEDULABLE
from corral_operator.status.sizes import format_size

EventType = Literal["Normal", "Warning"]
PROGRESS_MILESTONES = (25, 50, 75)
"""Percentages of a pull's bytes worth an Event each (once per pull)."""
# Reasons of a Pulled=False condition that are no failure: the pull goes on.
_PULLING = "Pulling"
# Reasons of a ModelServer's ModelsReady=False or Ready=False condition worth a Warning.
_SERVER_WARNINGS = ("ModelNotFound", "ModelsNotReady", "InvalidSpec", UNSCHEDULABLE, OOM_KILLED)


@dataclass(frozen=True, slots=True)
class Event:
    """One Event to post on the object: its type, a CamelCase reason and a sentence."""

    type: EventType
    reason: str
    message: str


def _decided(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _transitioned(
    previous: Sequence[Mapping[str, Any]] | None, now: Condition | None
) -> Condition | None:
    """``now`` when its status or reason differs from the stored condition of its type (a new
    state, not a resync of the same one); else None."""
    if now is None:
        return None
    before = find_condition(previous, now.type) or {}
    if (before.get("status"), before.get("reason")) == (now.status, now.reason):
        return None
    return now


def _percent(status: Mapping[str, Any]) -> int | None:
    done, total = status.get("completedBytes"), status.get("totalBytes")
    if done is None or not total:
        return None
    return int(100 * int(done) // int(total))


def model_events(
    previous: Mapping[str, Any], status: Mapping[str, Any], conditions: Iterable[Condition]
) -> list[Event]:
    """The Events of a Model's reconcile: ``previous`` is its stored status, ``status`` and
    ``conditions`` what the reconcile writes now."""
    decided = list(conditions)
    pulled = _decided(decided, "Pulled")
    changed = _transitioned(previous.get("conditions"), pulled)
    new_job = status.get("pullJob") not in (None, previous.get("pullJob"))
    events = []
    if pulled is not None and pulled.reason == _PULLING and (changed or new_job):
        events.append(
            Event(
                "Normal",
                "PullStarted",
                f"pulling {status.get('source')} with Job {status.get('pullJob')}",
            )
        )
    elif pulled is not None and pulled.reason == _PULLING:
        before, now = _percent(previous), _percent(status)
        crossed = [m for m in PROGRESS_MILESTONES if (before or 0) < m <= (now or 0)]
        if crossed:
            total = format_size(int(status["totalBytes"]))
            events.append(Event("Normal", "PullProgress", f"{crossed[-1]}% of {total} pulled"))
    if changed is not None and changed.status == "True":
        size = status.get("sizeBytes")
        facts = [format_size(int(size))] if size is not None else []
        facts += [str(status["digest"])] if status.get("digest") else []
        detail = f" ({', '.join(facts)})" if facts else ""
        events.append(
            Event(
                "Normal", "Pulled", f"{status.get('name') or 'the model'} is in the cache{detail}"
            )
        )
    elif changed is not None and changed.status == "False" and changed.reason != _PULLING:
        events.append(Event("Warning", changed.reason, changed.message))
    return events


def collected_event(stored_name: str, claim: str) -> Event:
    """The Event of a deleted Model whose entry the collect Job removed from the cache."""
    return Event("Normal", "CacheCollected", f"removed {stored_name} from cache {claim}")


def _keep_alive(spec: Mapping[str, Any]) -> float:
    return float(spec.get("keepAliveSeconds", api.DEFAULT_KEEP_ALIVE_SECONDS))


def scale_reason(server: Mapping[str, Any], before: int, after: int, now: datetime) -> str:
    """Why a ModelServer's replicas went from ``before`` to ``after``, in words: the request
    that woke it, its keep-alive running out, or its bounds."""
    spec = server.get("spec") or {}
    low, high = int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", 1))
    requested = spec.get("replicas")
    activity = server_activity(server, now)
    decided_reason = server_replicas(server, now).reason
    if decided_reason == "KeepAliveExpired" or (
        after < before
        and after == low
        and (deadline := idle_deadline(activity, _keep_alive(spec), api.max_keep_alive(spec)))
        is not None
        and now >= deadline
    ):
        return f"idle past its keep-alive: down to minReplicas ({low})"
    if decided_reason == "MinReplicas":
        return f"minReplicas is {low}"
    if requested is not None and int(requested) > max(low, high) and after == max(low, high):
        return f"{requested} requested, capped at maxReplicas ({high})"
    if requested is not None and int(requested) < low and after == low:
        return f"{requested} requested, raised to minReplicas ({low})"
    if before == 0 and activity.last_request_time is not None:
        return "a request woke it"
    return f"{after} requested (spec.replicas)"


def server_events(
    server: Mapping[str, Any],
    replicas: tuple[int, int] | None,
    conditions: Iterable[Condition],
    now: datetime,
) -> list[Event]:
    """The Events of a ModelServer's reconcile. ``replicas`` is the runtime Deployment's replicas
    before and after it (None while the server has no Deployment to apply), ``conditions``
    what the reconcile writes now."""
    previous = (server.get("status") or {}).get("conditions")
    decided = list(conditions)
    events = []
    if replicas is not None and replicas[0] != replicas[1]:
        before, after = replicas
        why = scale_reason(server, before, after, now)
        reason = "ScaledUp" if after > before else "ScaledDown"
        events.append(Event("Normal", reason, f"scaled from {before} to {after} replicas: {why}"))
    models_ready = _transitioned(previous, _decided(decided, "ModelsReady"))
    if models_ready is not None and models_ready.reason in _SERVER_WARNINGS:
        events.append(Event("Warning", models_ready.reason, models_ready.message))
    ready = _transitioned(previous, _decided(decided, "Ready"))
    if ready is not None and ready.reason == "Available":
        models = (_decided(decided, "ModelsReady") or Condition("", "True", "")).message
        events.append(
            Event("Normal", "Ready", f"{ready.message}; models loaded: {models or 'none'}")
        )
    elif (
        ready is not None
        and ready.reason in _SERVER_WARNINGS
        and (models_ready is None or models_ready.reason != ready.reason)
    ):
        events.append(Event("Warning", ready.reason, ready.message))
    return events

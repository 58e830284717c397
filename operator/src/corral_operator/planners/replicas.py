"""How many runtime pods a ModelServer should have: the one place scaling is decided.

Both the reconcile (events and the periodic resync) and the keep-alive timer (through
``idle_replicas``) ask ``server_replicas``, which reads everything the decision depends on from
the ModelServer: its spec (bounds, ``replicas``, ``keepAliveSeconds``, ``maxKeepAliveSeconds``),
``lastRequestTime`` and the gateway's ``corral.dev/in-flight`` and ``corral.dev/idle-deadline``
annotations.

What a request's ``keep_alive`` means for the server (Ollama's meaning, per model, mapped onto
replicas): each model the server serves expires ``keep_alive`` after its last request (the
server's ``keepAliveSeconds`` when the request set none, never for a negative value, right away
for 0); once every model has expired and nothing is in flight, the server goes to
``minReplicas``. The gateway sees the requests, so it computes that moment and writes it as the
idle deadline; without one (no request set a keep_alive) the deadline is ``lastRequestTime +
keepAliveSeconds``. ``maxKeepAliveSeconds`` bounds how long after the last request a requested
keep_alive (a negative one included) keeps the server up; -1 sets no bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from corral_operator import api


@dataclass(frozen=True, slots=True)
class ReplicaDecision:
    replicas: int
    reason: str
    """``Requested`` (scale subresource), ``MinReplicas`` or ``KeepAliveExpired``."""


@dataclass(frozen=True, slots=True)
class Activity:
    """What the gateway recorded on a ModelServer."""

    last_request_time: datetime | None = None
    in_flight: int = 0
    idle_deadline: datetime | None = None
    """When every served model's requested keep_alive runs out; None: no request set one."""


def idle_deadline(
    activity: Activity, keep_alive_seconds: float, max_keep_alive_seconds: float | None
) -> datetime | None:
    """When an idle server may go to its minimum; None while that is unknown (no request was
    ever recorded), which never scales down.

    The gateway's idle deadline wins over ``lastRequestTime + keep_alive_seconds`` in both
    directions (a ``keep_alive: 0`` lets the server go at once, a longer one keeps it up), but no
    further than ``max_keep_alive_seconds`` (or ``keep_alive_seconds``, when that is longer)
    after the last request.
    """
    last = activity.last_request_time
    if last is None:
        return None
    if activity.idle_deadline is None:
        return _after(last, keep_alive_seconds)
    if max_keep_alive_seconds is None:
        return activity.idle_deadline
    return min(
        activity.idle_deadline, _after(last, max(max_keep_alive_seconds, keep_alive_seconds))
    )


def decide_replicas(
    *,
    min_replicas: int,
    max_replicas: int,
    requested: int | None,
    now: datetime | None = None,
    activity: Activity | None = None,
    keep_alive_seconds: float = api.DEFAULT_KEEP_ALIVE_SECONDS,
    max_keep_alive_seconds: float | None = api.DEFAULT_MAX_KEEP_ALIVE_SECONDS,
) -> ReplicaDecision:
    """Desired replicas, always within ``[min_replicas, max(min_replicas, max_replicas)]``.

    ``requested`` is ``spec.replicas`` (what the gateway, an HPA or ``kubectl scale`` asked for);
    unset means ``min_replicas``. Once ``now`` is past the server's ``idle_deadline`` with
    nothing in flight, it falls back to ``min_replicas``. Unknown idleness never scales down.
    """
    upper = max(min_replicas, max_replicas)
    if requested is None:
        return ReplicaDecision(min_replicas, "MinReplicas")
    if now is not None and activity is not None and activity.in_flight == 0:
        deadline = idle_deadline(activity, keep_alive_seconds, max_keep_alive_seconds)
        if deadline is not None and now >= deadline and requested > min_replicas:
            return ReplicaDecision(min_replicas, "KeepAliveExpired")
    return ReplicaDecision(min(max(requested, min_replicas), upper), "Requested")


def effective_in_flight(
    raw: str | None, last_request_time: datetime | None, now: datetime, stale_seconds: float
) -> int:
    """The gateway's in-flight count, trusted only while its lastRequestTime is fresh (a gateway
    that died with requests in flight must not keep a server up forever)."""
    try:
        count = int(raw or 0)
    except ValueError:
        return 0
    if count <= 0 or last_request_time is None:
        return 0
    return count if (now - last_request_time).total_seconds() <= stale_seconds else 0


def server_activity(
    server: Mapping[str, Any], now: datetime, stale_seconds: float = api.IN_FLIGHT_STALE_SECONDS
) -> Activity:
    """The activity the gateway recorded on ``server`` (status and annotations)."""
    status = server.get("status") or {}
    annotations = (server.get("metadata") or {}).get("annotations") or {}
    last = api.parse_time(status.get("lastRequestTime"))
    return Activity(
        last_request_time=last,
        in_flight=effective_in_flight(
            annotations.get(api.ANNOTATION_IN_FLIGHT), last, now, stale_seconds
        ),
        idle_deadline=api.parse_time(annotations.get(api.ANNOTATION_IDLE_DEADLINE)),
    )


def server_replicas(
    server: Mapping[str, Any], now: datetime, stale_seconds: float = api.IN_FLIGHT_STALE_SECONDS
) -> ReplicaDecision:
    """``decide_replicas`` for a ModelServer as it is stored."""
    spec = server.get("spec") or {}
    requested = spec.get("replicas")
    return decide_replicas(
        min_replicas=int(spec.get("minReplicas", 0)),
        max_replicas=int(spec.get("maxReplicas", 1)),
        requested=None if requested is None else int(requested),
        now=now,
        activity=server_activity(server, now, stale_seconds),
        keep_alive_seconds=float(spec.get("keepAliveSeconds", api.DEFAULT_KEEP_ALIVE_SECONDS)),
        max_keep_alive_seconds=api.max_keep_alive(spec),
    )


def idle_replicas(server: Mapping[str, Any], now: datetime, stale_seconds: float) -> int | None:
    """The replicas the keep-alive timer should scale ``server`` to for idleness, or None to
    leave it (not idle, already there, or ``spec.replicas`` unset, which means the minimum)."""
    requested = (server.get("spec") or {}).get("replicas")
    decision = server_replicas(server, now, stale_seconds)
    if decision.reason != "KeepAliveExpired" or requested is None:
        return None
    return decision.replicas if decision.replicas != int(requested) else None


def _after(moment: datetime, seconds: float) -> datetime:
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return api.FOREVER

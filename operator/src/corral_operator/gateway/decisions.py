"""The gateway's decisions as pure functions: which pod takes a request, when to scale a server
up, whether a held request may queue, when activity is worth writing to the API server, and how
far a request's ``keep_alive`` pushes its server's idle deadline."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta


def pick_endpoint(
    endpoints: Sequence[str],
    in_flight: Mapping[str, int],
    exclude: Collection[str] = (),
    turn: int = 0,
) -> str | None:
    """The ready endpoint with the fewest requests in flight, skipping ``exclude`` (pods that
    already failed this request). Ties rotate with ``turn`` so equal pods share the load."""
    candidates = [e for e in endpoints if e not in exclude]
    if not candidates:
        return None
    fewest = min(in_flight.get(e, 0) for e in candidates)
    tied = [e for e in candidates if in_flight.get(e, 0) == fewest]
    return tied[turn % len(tied)]


def early_endpoints(
    starting: Sequence[str], probed: Mapping[str, float], now: float, trust_seconds: float
) -> tuple[str, ...]:
    """Pods not Ready yet in the Endpoints that answered the gateway's own readiness probe in
    the last ``trust_seconds`` (``probed``: endpoint -> when, monotonic): routable now, a probe
    period and a status round-trip before the cluster says so."""
    return tuple(e for e in starting if e in probed and 0 <= now - probed[e] <= trust_seconds)


def decide_scale_up(
    *,
    desired: int,
    ready: int,
    in_flight: int,
    held: int,
    target_per_pod: float,
    min_replicas: int,
    max_replicas: int,
) -> int | None:
    """The replicas to ask for, or None to leave the server alone. The gateway only scales up;
    scaling down is the operator's keep-alive decision.

    A server with waiting requests and no replica asked for gets one (whatever the load target
    says: never a 503 because nothing is running). Beyond that, it grows towards
    ``max_replicas`` while the demand per ready pod exceeds ``target_per_pod``.
    """
    upper = max(min_replicas, max_replicas, 1)
    demand = in_flight + held
    wanted = desired
    if demand > 0 and desired < 1:
        wanted = 1
    if ready > 0 and demand > ready * target_per_pod:
        wanted = max(wanted, min(upper, math.ceil(demand / target_per_pod)))
    wanted = min(max(wanted, desired), upper)
    return wanted if wanted > desired else None


def may_hold(held: int, capacity: int) -> bool:
    """Whether one more request fits in a model's hold queue."""
    return held < capacity


def should_flush_activity(
    *,
    now: float,
    last_flush: float | None,
    interval: float,
    activity: float | None,
    flushed_activity: float | None,
    in_flight: int,
) -> bool:
    """Whether to write ``lastRequestTime`` now: only when there is news (newer activity, or
    requests still in flight, which count as activity) and at most once per ``interval``."""
    has_news = in_flight > 0 or (
        activity is not None and (flushed_activity is None or activity > flushed_activity)
    )
    if not has_news:
        return False
    return last_flush is None or now - last_flush >= interval


def extended_idle_deadline(
    now: datetime,
    keep_alive: float | None,
    cap_seconds: float,
    current: datetime | None,
) -> datetime | None:
    """The idle deadline after a request that asked to stay loaded for ``keep_alive`` seconds.

    Negative (forever) and oversized values are capped at ``cap_seconds``; 0 or no value asks
    for nothing, so the deadline never moves earlier than it already is — ``keep_alive: 0``
    cannot shorten the server's own keepAliveSeconds.
    """
    if keep_alive is None or not keep_alive > 0:  # NaN asks for nothing either
        return current
    candidate = now + timedelta(seconds=min(keep_alive, cap_seconds))
    if current is None or candidate > current:
        return candidate
    return current


def hold_failure_message(model: str, waited_seconds: float, reason: str | None) -> str:
    """The message of a held request that reached its deadline."""
    why = f": {reason}" if reason else ""
    return (
        f"model '{model}' could not be served: its server did not become ready within "
        f"{waited_seconds:.0f}s{why}"
    )

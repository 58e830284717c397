"""The gateway's decisions as pure functions: which pod takes a request, when to scale a server
up, whether a held request may queue, when activity is worth writing to the API server, when
the requests' ``keep_alive`` lets a server go (its idle deadline), and when an unload is answered
without a pod."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from corral_operator.api import FOREVER
from corral_operator.gateway.topology import ServerView


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


@dataclass(frozen=True, slots=True)
class ModelKeep:
    """The ``keep_alive`` of a model's latest request through the gateway, and when that
    model was last active (its requests' start, then their end once the server is idle)."""

    keep_alive: float | None
    """Seconds (``inf``: forever); None: the request set none, the server's keepAliveSeconds."""
    last: float
    """Wall-clock seconds."""


def server_idle_deadline(
    models: Mapping[str, ModelKeep],
    *,
    keep_alive_seconds: float,
    max_keep_alive_seconds: float | None,
) -> datetime | None:
    """When every model of a server has expired, Ollama's ``keep_alive`` per model mapped onto
    the server: the furthest of each model's last activity plus its keep_alive (a request's own,
    at most ``max_keep_alive_seconds``, which None leaves unbounded; else ``keep_alive_seconds``).

    The latest request of a model sets its keep_alive, so a ``keep_alive: 0`` undoes an earlier
    ``-1``. None while no request set one: the operator then takes ``lastRequestTime +
    keepAliveSeconds``, and ``FOREVER`` for an unbounded forever.
    """
    if all(m.keep_alive is None for m in models.values()):
        return None
    furthest: datetime | None = None
    for model in models.values():
        if model.keep_alive is None:
            keep = keep_alive_seconds
        elif max_keep_alive_seconds is None:
            keep = model.keep_alive
        else:
            keep = min(model.keep_alive, max_keep_alive_seconds)
        if math.isinf(keep):
            return FOREVER
        try:
            moment = datetime.fromtimestamp(model.last, UTC) + timedelta(seconds=keep)
        except (OverflowError, ValueError):
            return FOREVER
        furthest = moment if furthest is None else max(furthest, moment)
    return furthest


def unload_answered_here(unload: bool, view: ServerView | None) -> bool:
    """Whether the gateway answers an unload request itself: when no pod of the server takes
    requests (scaled to zero, scaling down, or still starting), nothing there has the model
    loaded, and forwarding would hold the request and wake the server only to unload it. To a
    server with pods it is forwarded; either way its keep_alive 0 is recorded, so the server
    goes down to minReplicas once nothing else keeps it up."""
    return unload and (view is None or not view.serving)


def hold_failure_message(model: str, waited_seconds: float, reason: str | None) -> str:
    """The message of a held request that reached its deadline."""
    why = f": {reason}" if reason else ""
    return (
        f"model '{model}' could not be served: its server did not become ready within "
        f"{waited_seconds:.0f}s{why}"
    )

"""How many runtime pods a ModelServer should have: the one place scaling is decided."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplicaDecision:
    replicas: int
    reason: str
    """``Requested`` (scale subresource), ``MinReplicas`` or ``KeepAliveExpired``."""


def decide_replicas(
    *,
    min_replicas: int,
    max_replicas: int,
    requested: int | None,
    idle_seconds: float | None = None,
    keep_alive_seconds: int | None = None,
    in_flight: int = 0,
) -> ReplicaDecision:
    """Desired replicas, always within ``[min_replicas, max(min_replicas, max_replicas)]``.

    ``requested`` is ``spec.replicas`` (what the gateway, an HPA or ``kubectl scale`` asked for);
    unset means ``min_replicas``. When the server has been idle (``idle_seconds`` since the last
    request, nothing in flight) for at least ``keep_alive_seconds``, it falls back to
    ``min_replicas``. Unknown idleness never scales down.
    """
    upper = max(min_replicas, max_replicas)
    if requested is None:
        return ReplicaDecision(min_replicas, "MinReplicas")
    if (
        idle_seconds is not None
        and keep_alive_seconds is not None
        and in_flight == 0
        and idle_seconds >= keep_alive_seconds
        and requested > min_replicas
    ):
        return ReplicaDecision(min_replicas, "KeepAliveExpired")
    return ReplicaDecision(min(max(requested, min_replicas), upper), "Requested")

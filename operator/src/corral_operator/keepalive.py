"""Keep-alive scale-to-zero: a ModelServer idle for ``keepAliveSeconds`` with nothing in flight
goes back to ``minReplicas``, through its scale subresource.

The gateway records activity on the ModelServer: ``status.lastRequestTime`` (at most one write
per interval, and kept current while requests are in flight), the ``corral.dev/in-flight``
annotation (requests it has in flight or held), and ``corral.dev/idle-deadline`` (the furthest a
request's ``keep_alive`` asked to stay up). ``decide_idle_scale`` is the decision; ``tick`` is the
thin timer handler that reads those and writes the scale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral_operator import api
from corral_operator.gateway import kubeapi
from corral_operator.handlers.context import Context

ANNOTATION_IDLE_DEADLINE = f"{api.GROUP}/idle-deadline"
ANNOTATION_IN_FLIGHT = f"{api.GROUP}/in-flight"
ANNOTATION_WAKE = f"{api.GROUP}/wake-requested"


class KeepAliveSettings(BaseSettings):
    """The operator's keep-alive knobs (``CORRAL_OPERATOR_*``, next to OperatorSettings)."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_OPERATOR_", extra="ignore")

    keep_alive_check_seconds: float = Field(default=10.0, gt=0)
    max_keep_alive_seconds: float = Field(
        default=3600.0, ge=0, description="Cap on how far a request's keep_alive extends idleness."
    )
    in_flight_stale_seconds: float = Field(
        default=120.0,
        gt=0,
        description="An in-flight count older than this (by lastRequestTime) is ignored: the "
        "gateway that wrote it refreshes lastRequestTime while requests are in flight.",
    )


def decide_idle_scale(
    *,
    now: datetime,
    last_request_time: datetime | None,
    keep_alive_seconds: float,
    in_flight: int,
    min_replicas: int,
    current_replicas: int,
    extended_deadline: datetime | None = None,
    max_extension_seconds: float = 3600.0,
) -> int:
    """The replicas a server should have as far as idleness goes: ``min_replicas`` once idle
    past its deadline with nothing in flight, else ``current_replicas``.

    The deadline is ``last_request_time + keep_alive_seconds``, pushed out (never in) by a
    request's ``keep_alive`` (``extended_deadline``), which is capped at ``max_extension_seconds``
    after the last request. Unknown idleness (no request ever recorded) never scales down.
    """
    if current_replicas <= min_replicas or in_flight > 0 or last_request_time is None:
        return current_replicas
    deadline = last_request_time + timedelta(seconds=keep_alive_seconds)
    if extended_deadline is not None:
        cap = last_request_time + timedelta(seconds=max_extension_seconds)
        deadline = max(deadline, min(extended_deadline, cap))
    return min_replicas if now >= deadline else current_replicas


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


def idle_replicas(
    server: Mapping[str, Any], now: datetime, settings: KeepAliveSettings
) -> int | None:
    """The replicas ``server`` should be scaled to for idleness, or None to leave it."""
    spec = server.get("spec") or {}
    status = server.get("status") or {}
    annotations = (server.get("metadata") or {}).get("annotations") or {}
    low = int(spec.get("minReplicas", 0))
    requested = spec.get("replicas")
    current = low if requested is None else int(requested)
    last = kubeapi.parse_time(status.get("lastRequestTime"))
    wanted = decide_idle_scale(
        now=now,
        last_request_time=last,
        keep_alive_seconds=float(spec.get("keepAliveSeconds", 300)),
        in_flight=effective_in_flight(
            annotations.get(ANNOTATION_IN_FLIGHT), last, now, settings.in_flight_stale_seconds
        ),
        min_replicas=low,
        current_replicas=current,
        extended_deadline=kubeapi.parse_time(annotations.get(ANNOTATION_IDLE_DEADLINE)),
        max_extension_seconds=settings.max_keep_alive_seconds,
    )
    return wanted if wanted != current else None


def tick(
    ctx: Context,
    namespace: str,
    name: str,
    now: datetime,
    settings: KeepAliveSettings,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """The keep-alive timer of one ModelServer: scale it to minReplicas once idle."""
    server = ctx.kube.get("ModelServer", namespace, name)
    if server is None or server["metadata"].get("deletionTimestamp"):
        return
    replicas = idle_replicas(server, now, settings)
    if replicas is None:
        return
    logger.info("idle past its keep-alive: scaling %s/%s to %d", namespace, name, replicas)
    # The scale write is what the gateway watches: from here on the pods get no new requests,
    # and a request arriving now is held and scales the server up again.
    # idle_replicas only answers for servers whose spec.replicas is set (unset means min).
    kubeapi.scale_replicas(ctx.kube.client, namespace, name, replicas)

"""Keep-alive scale-to-zero: a ModelServer idle past its deadline with nothing in flight goes back
to ``minReplicas``, through its scale subresource.

The gateway records activity on the ModelServer: ``status.lastRequestTime`` (at most one write
per interval, and kept current while requests are in flight), the ``corral.dev/in-flight``
annotation (requests it has in flight or held), and ``corral.dev/idle-deadline`` (when every
served model's requested ``keep_alive`` runs out). The decision is the reconcile's own
(``planners.replicas.server_replicas``), so the timer and a resync never disagree; ``tick`` is
the thin timer handler that writes the scale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral_operator import api
from corral_operator.gateway import kubeapi
from corral_operator.handlers.context import Context
from corral_operator.planners.replicas import ANNOTATION_IDLE_DEADLINE as ANNOTATION_IDLE_DEADLINE
from corral_operator.planners.replicas import ANNOTATION_IN_FLIGHT as ANNOTATION_IN_FLIGHT
from corral_operator.planners.replicas import IN_FLIGHT_STALE_SECONDS, server_replicas

ANNOTATION_WAKE = f"{api.GROUP}/wake-requested"


class KeepAliveSettings(BaseSettings):
    """The operator's keep-alive knobs (``CORRAL_OPERATOR_*``, next to OperatorSettings)."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_OPERATOR_", extra="ignore")

    keep_alive_check_seconds: float = Field(default=10.0, gt=0)
    in_flight_stale_seconds: float = Field(
        default=IN_FLIGHT_STALE_SECONDS,
        gt=0,
        description="An in-flight count older than this (by lastRequestTime) is ignored: the "
        "gateway that wrote it refreshes lastRequestTime while requests are in flight.",
    )


def idle_replicas(
    server: Mapping[str, Any], now: datetime, settings: KeepAliveSettings
) -> int | None:
    """The replicas ``server`` should be scaled to for idleness, or None to leave it."""
    requested = (server.get("spec") or {}).get("replicas")
    decision = server_replicas(server, now, settings.in_flight_stale_seconds)
    if decision.reason != "KeepAliveExpired" or requested is None:
        return None
    return decision.replicas if decision.replicas != int(requested) else None


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

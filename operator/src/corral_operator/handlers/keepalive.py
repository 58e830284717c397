"""Keep-alive scale-to-zero: a ModelServer idle past its deadline with nothing in flight goes back
to ``minReplicas``, through its scale subresource.

The gateway records activity on the ModelServer: ``status.lastRequestTime`` (at most one write
per interval, and kept current while requests are in flight), the ``corral.dev/in-flight``
annotation (requests it has in flight or held), and ``corral.dev/idle-deadline`` (when every
served model's requested ``keep_alive`` runs out). The decision is the reconcile's own
(``planners.replicas.idle_replicas``), so the timer and a resync never disagree; ``tick`` is
the thin timer handler that writes the scale.
"""

from __future__ import annotations

from datetime import datetime

from corral_operator.handlers.apply import Logger
from corral_operator.handlers.context import Context
from corral_operator.planners.replicas import idle_replicas


def tick(ctx: Context, namespace: str, name: str, now: datetime, logger: Logger) -> None:
    """The keep-alive timer of one ModelServer: scale it to minReplicas once idle."""
    server = ctx.kube.get("ModelServer", namespace, name)
    if server is None or server["metadata"].get("deletionTimestamp"):
        return
    replicas = idle_replicas(server, now, ctx.settings.in_flight_stale_seconds)
    if replicas is None:
        return
    logger.info("idle past its keep-alive: scaling %s/%s to %d", namespace, name, replicas)
    # The scale write is what the gateway watches: from here on the pods get no new requests,
    # and a request arriving now is held and scales the server up again.
    # idle_replicas only answers for servers whose spec.replicas is set (unset means min).
    ctx.kube.scale("ModelServer", namespace, name, replicas)

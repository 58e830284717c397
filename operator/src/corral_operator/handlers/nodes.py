"""The node watch: a node joining, leaving or changing its GPUs re-sizes the ModelServers whose
placement reads the nodes (planners/nodes.py), so a server that fit nowhere is scheduled as soon
as a node that holds it joins, not at its next resync."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral_operator.handlers.apply import Logger
from corral_operator.handlers.context import Context
from corral_operator.handlers.modelservers import reconcile_modelserver
from corral_operator.planners.nodes import node_gpus, resizes

DELETED = "DELETED"


def on_node_event(
    ctx: Context,
    event_type: str | None,
    node: Mapping[str, Any],
    servers: Iterable[tuple[str, str]],
    logger: Logger,
) -> None:
    """Remember what sizing reads of ``node``; when that changed, reconcile ``servers`` (the
    (namespace, name) of every server sized from the nodes). ``event_type`` is the watch's:
    None for a listing, ADDED, MODIFIED or DELETED."""
    name = str(node["metadata"]["name"])
    seen, before = name in ctx.node_gpus, ctx.node_gpus.get(name)
    if event_type == DELETED:
        after = None
        ctx.node_gpus.pop(name, None)
    else:
        after = node_gpus(node)
        ctx.node_gpus[name] = after
    if not resizes(event_type is None, seen, before, after):
        return
    for namespace, server in sorted(set(servers)):
        logger.info(
            "node %s changed its GPUs: re-sizing ModelServer %s/%s", name, namespace, server
        )
        reconcile_modelserver(ctx, namespace, server, logger)

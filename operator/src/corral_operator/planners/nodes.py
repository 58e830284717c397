"""Which node changes re-size which ModelServers.

A server sized from its models (planners/sizing.py) is placed on the GPU nodes there are: a GPU
count that some node holds, a node affinity on the GPU memory label, or DoesNotFit. A node
joining, leaving, or changing its GPU memory label or its capacity changes that answer, so the
operator re-reconciles the servers whose placement reads the nodes at once, rather than at their
next resync; the others (and every server, for a node change sizing does not read: a heartbeat,
a condition, another label) are left alone. Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral_operator.builders.runtime import GPU_MEMORY_LABEL

NodeGpus = tuple[str, tuple[tuple[str, str], ...]] | None
"""What sizing reads of a node: its GPU memory label and its capacity (which holds the GPU
count of every resource name a server may ask for); None for a node without the label, which
sizing ignores."""


def node_gpus(node: Mapping[str, Any]) -> NodeGpus:
    """What sizing reads of ``node`` (``sizing.gpu_nodes``), in a form that compares equal
    exactly when sizing would see the same node."""
    label = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_MEMORY_LABEL)
    if label is None:
        return None
    capacity = (node.get("status") or {}).get("capacity") or {}
    return str(label), tuple(sorted((str(k), str(v)) for k, v in capacity.items()))


def resizes(listed: bool, seen: bool, before: NodeGpus, after: NodeGpus) -> bool:
    """Whether a node's event can change a sized server's placement: what sizing reads of it
    went from ``before`` to ``after`` (None for a node that is gone, or unlabelled).

    ``listed``: the event comes from a watch's listing, not a change (at start-up and after a
    broken watch). A node listed for the first time (``seen`` False) changes nothing: at
    start-up every server is reconciled anyway; one already seen is compared, since the
    listing may follow changes the broken watch missed."""
    if listed and not seen:
        return False
    return before != after


def sized_from_nodes(server: Mapping[str, Any]) -> bool:
    """Whether ``server``'s plan reads the nodes: it was sized from its models (it reports
    ``status.sizing``) and its spec does not pin the pods to no GPU. With ``gpus`` unset the
    count comes from the nodes; an explicit count is still checked against the nodes' GPU
    memory (affinity, DoesNotFit). An explicit 0 is a CPU server, whatever the nodes' GPUs."""
    if not (server.get("status") or {}).get("sizing"):
        return False
    gpus = ((server.get("spec") or {}).get("resources") or {}).get("gpus")
    return gpus is None or int(gpus) > 0

"""What every handler needs, created once at startup and kept in kopf's ``memo``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from corral_operator.kube import Applied, Kube
from corral_operator.planners.nodes import NodeGpus
from corral_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Context:
    kube: Kube
    settings: OperatorSettings
    applied: dict[tuple[str, str, str], Applied] = field(default_factory=dict)
    """The API server's last answer to our apply of each object (kind, namespace, name): what
    tells the next apply's changes apart, since the operator may not read most of its
    children (its RBAC grants create and patch only). A few short strings per object."""

    locks: dict[tuple[str, str, str], threading.Lock] = field(default_factory=dict)
    """One lock per Model or ModelServer (kind, namespace, name): its reconciles run one at a
    time (kopf calls them from its own and its children's watches at once), so each sees the
    status the previous one wrote and posts a transition's Events once."""

    node_gpus: dict[str, NodeGpus] = field(default_factory=dict)
    """What sizing last read of each node the node watch has seen (planners.nodes.node_gpus):
    what tells a change sizing reads apart from a heartbeat. A few short strings per node."""

    def one_at_a_time(
        self, kind: str, namespace: str, name: str, reconcile: Callable[[], bool]
    ) -> None:
        """Run ``reconcile`` under the object's lock (``setdefault`` is atomic: two threads get
        the same lock); once it answers False (the object is gone) its lock goes too."""
        key = (kind, namespace, name)
        with self.locks.setdefault(key, threading.Lock()):
            if not reconcile():
                self.locks.pop(key, None)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the kept answers for the objects called ``name`` in ``namespace``, of any kind:
        their owner is gone and the garbage collector takes them, so nothing applies them again.
        (``list`` copies the keys in one step: other handler threads add entries meanwhile.)"""
        for key in list(self.applied):
            if key[1:] == (namespace, name):
                self.applied.pop(key, None)

"""What every handler needs, created once at startup and kept in kopf's ``memo``."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral_operator.kube import Applied, Kube
from corral_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Context:
    kube: Kube
    settings: OperatorSettings
    applied: dict[tuple[str, str, str], Applied] = field(default_factory=dict)
    """The API server's last answer to our apply of each object (kind, namespace, name): what
    tells the next apply's changes apart, since the operator may not read most of its
    children (its RBAC grants create and patch only). A few short strings per object."""

    def forget(self, namespace: str, name: str) -> None:
        """Drop the kept answers for the objects called ``name`` in ``namespace``, of any kind:
        their owner is gone and the garbage collector takes them, so nothing applies them again.
        (``list`` copies the keys in one step: other handler threads add entries meanwhile.)"""
        for key in list(self.applied):
            if key[1:] == (namespace, name):
                self.applied.pop(key, None)

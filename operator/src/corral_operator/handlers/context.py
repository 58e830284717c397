"""What every handler needs, created once at startup and kept in kopf's ``memo``."""

from __future__ import annotations

from dataclasses import dataclass

from corral_operator.kube import Kube
from corral_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Context:
    kube: Kube
    settings: OperatorSettings

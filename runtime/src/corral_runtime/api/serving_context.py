"""What serving a request takes from the app, gathered into one dependency so that routes pass
one thing to the serving modules: the model manager, the metrics, and the keep-alive that
applies when a request names none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from corral_runtime.api.deps import ManagerDep, MetricsDep, SettingsDep
from corral_runtime.engine.manager import ModelManager
from corral_runtime.metrics import RuntimeMetrics


@dataclass(frozen=True, slots=True)
class Serving:
    manager: ModelManager
    metrics: RuntimeMetrics
    default_keep_alive: float  # seconds; the OpenAI API has no keep_alive, so always this


async def get_serving(manager: ManagerDep, metrics: MetricsDep, settings: SettingsDep) -> Serving:
    return Serving(manager, metrics, settings.keep_alive_seconds)


ServingDep = Annotated[Serving, Depends(get_serving)]

"""What serving a request takes from the app, gathered into one dependency so that routes pass
one thing to the serving modules: the model manager, the metrics, and the keep-alive that
applies when a request names none, and the request's priority class (``X-Corral-Priority``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from corral_runtime.api.deps import ManagerDep, MetricsDep, SettingsDep
from corral_runtime.api.errors import ApiError
from corral_runtime.engine.manager import ModelManager
from corral_runtime.engine.priority import PRIORITY_HEADER, UnknownPriorityError, parse_priority
from corral_runtime.metrics import RuntimeMetrics


@dataclass(frozen=True, slots=True)
class Serving:
    manager: ModelManager
    metrics: RuntimeMetrics
    default_keep_alive: float  # seconds; the OpenAI API has no keep_alive, so always this
    priority: str  # the class the request waits for a slot in (``engine.priority``)


async def get_serving(
    request: Request, manager: ManagerDep, metrics: MetricsDep, settings: SettingsDep
) -> Serving:
    """What serving takes, with the request's priority class; an unknown class is a 400
    (a typo must not silently run a batch job as interactive)."""
    try:
        priority = parse_priority(request.headers.get(PRIORITY_HEADER))
    except UnknownPriorityError as exc:
        raise ApiError(400, str(exc)) from exc
    return Serving(manager, metrics, settings.keep_alive_seconds, priority)


ServingDep = Annotated[Serving, Depends(get_serving)]

"""Dependencies the routers declare: the settings, the model manager, the store, the metrics,
all read from ``app.state`` (see app.py), never from module globals.

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop on every request for what is an attribute read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from corral_runtime.api.errors import ApiError
from corral_runtime.api.perimeter import Role, credential_role
from corral_runtime.engine.manager import ModelManager
from corral_runtime.metrics import RuntimeMetrics
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.layout import ModelStore


async def get_settings(request: Request) -> RuntimeSettings:
    settings: RuntimeSettings = request.app.state.settings
    return settings


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_metrics(request: Request) -> RuntimeMetrics:
    metrics: RuntimeMetrics = request.app.state.metrics
    return metrics


async def require_management(request: Request) -> None:
    """The guard of the model-management routes: on only when enabled (403), and only for a
    credential that grants management (see ``perimeter.credential_role``)."""
    settings: RuntimeSettings = request.app.state.settings
    if not settings.management:
        raise ApiError(
            403,
            "model management is disabled on this server "
            "(in a cluster, models are managed with Model resources)",
        )
    supplied = request.headers.get("authorization")
    role = credential_role(
        (supplied or "").encode("latin-1"), settings.api_key, settings.admin_api_key
    )
    if role is not Role.ADMIN:
        if supplied is None:
            raise ApiError(401, "model management requires the admin API key")
        raise ApiError(403, "this API key may not manage models; use the admin API key")


SettingsDep = Annotated[RuntimeSettings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
MetricsDep = Annotated[RuntimeMetrics, Depends(get_metrics)]

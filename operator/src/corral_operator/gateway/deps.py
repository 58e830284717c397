"""Dependencies the gateway's routes declare: its settings, metrics, dispatcher and proxy, all
read from ``app.state`` (see app.py), never from module globals.

They are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop on every routed request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.applications import Starlette

from corral_operator.gateway.dispatcher import Dispatcher
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.proxy import Proxy
from corral_operator.gateway.settings import GatewaySettings


def dispatcher_of(app: Starlette) -> Dispatcher:
    """The app's dispatcher (made by the app's lifespan)."""
    dispatcher: Dispatcher = app.state.dispatcher
    return dispatcher


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


async def get_dispatcher(request: Request) -> Dispatcher:
    return dispatcher_of(request.app)


async def get_proxy(request: Request) -> Proxy:
    proxy: Proxy = request.app.state.proxy
    return proxy


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ProxyDep = Annotated[Proxy, Depends(get_proxy)]

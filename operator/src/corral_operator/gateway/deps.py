"""Dependencies the gateway's routes declare (its metrics and dispatcher), and the accessors
behind them, all reading ``app.state`` (see app.py), never module globals. The routed hot path
(routes.routed) calls the accessors directly.

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


def proxy_of(app: Starlette) -> Proxy:
    """The app's proxy (made by the app's lifespan, with the dispatcher)."""
    proxy: Proxy = app.state.proxy
    return proxy


def settings_of(app: Starlette) -> GatewaySettings:
    settings: GatewaySettings = app.state.settings
    return settings


async def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


async def get_dispatcher(request: Request) -> Dispatcher:
    return dispatcher_of(request.app)


MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]

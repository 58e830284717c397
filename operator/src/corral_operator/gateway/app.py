"""The gateway's FastAPI application: ``create_gateway_app(settings)``.

The factory only assembles: state, middleware, the routes (``routes``) and the lifespan that
starts the dispatcher. State lives on ``app.state`` (never in module globals), for the routes to
reach through ``deps``:

- ``app.state.settings`` — the ``GatewaySettings`` the app was built with;
- ``app.state.metrics`` — the app's ``GatewayMetrics`` (its own Prometheus registry);
- ``app.state.dispatcher`` — the ``Dispatcher`` (routing table, holds, activity), and
  ``app.state.proxy`` — the ``Proxy`` to the pods, both made by the lifespan;
- ``app.state.drain`` — the ``DrainState`` a SIGTERM sets draining (``shutdown``).

Middleware, outermost first: the ``Perimeter`` refuses unknown hosts and foreign browser
origins, ``Draining`` refuses new requests once draining, ``AuthorizeAndCount`` checks API keys
and counts routed requests, ``RoutedDirect`` hands routed requests to ``routes.routed`` without
FastAPI's router.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from corral_operator.gateway import routes
from corral_operator.gateway.backend import Backend, StaticBackend
from corral_operator.gateway.deps import dispatcher_of
from corral_operator.gateway.dispatcher import Dispatcher
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.middleware import AuthorizeAndCount, RoutedDirect
from corral_operator.gateway.perimeter import Perimeter
from corral_operator.gateway.proxy import Proxy, upstream_session
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.shutdown import Draining, DrainState
from corral_operator.gateway.upstream import UpstreamPool


def _version() -> str:
    try:
        return importlib.metadata.version("corral-operator")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def default_backend(settings: GatewaySettings) -> Backend:
    if settings.static_servers:
        return StaticBackend(settings)
    from corral_operator.gateway.cluster import ClusterBackend

    return ClusterBackend(settings)


def create_gateway_app(settings: GatewaySettings, backend: Backend | None = None) -> FastAPI:
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_session(settings) as client:
            dispatcher = Dispatcher(settings, backend or default_backend(settings), metrics, client)
            pool = UpstreamPool(settings.connect_timeout_seconds)
            app.state.dispatcher = dispatcher
            app.state.proxy = Proxy(dispatcher, pool)
            dispatcher.start()
            try:
                yield
            finally:
                await dispatcher.stop()
                pool.close()

    app = FastAPI(
        title="corral gateway",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # The gateway reports through its own Prometheus metrics and sets up no OpenTelemetry:
        # FastAPI's native telemetry would look for configured global providers on every
        # request (4 µs of CPU here, 30 while the machine was loaded) to find none.
        # (FastAPI versions before it keep the argument as an unused extra.)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = DrainState()
    app.include_router(routes.router)

    app.add_middleware(RoutedDirect, routed=routes.routed_app)
    app.add_middleware(
        AuthorizeAndCount,
        # The dispatcher holds the keys in force (a watched Secret's, or the settings').
        keys=lambda: dispatcher_of(app).api_keys,
        keys_required=bool(settings.api_key_secret),
        metrics=metrics,
    )
    app.add_middleware(Draining, state=app.state.drain)
    # Outermost: a request for an unknown host or from a foreign origin goes no further.
    app.add_middleware(
        Perimeter,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )
    return app

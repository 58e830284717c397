"""The gateway's FastAPI application: ``create_gateway_app(settings)``.

Routed endpoints (``/api/generate``, ``/api/chat``, ``/v1/chat/completions``, …) go by their
``model`` field to a pod of the ModelServer that serves it; listings are answered from the
routing table (``/api/tags``, ``/v1/models``) or gathered from the pods (``/api/ps``).
State lives on ``app.state``: ``settings``, ``metrics``, ``dispatcher``, ``proxy``, and
``drain`` (the ``DrainState`` a SIGTERM sets draining, see ``shutdown``). Outermost, the
``Perimeter`` refuses unknown hosts and foreign browser origins.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from corral_operator.durations import keep_alive_seconds
from corral_operator.gateway.auth import authorized
from corral_operator.gateway.backend import Backend, StaticBackend
from corral_operator.gateway.dispatcher import Dispatcher, QueueFullError
from corral_operator.gateway.listing import merge_ps, ollama_tags, openai_model, openai_models
from corral_operator.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from corral_operator.gateway.perimeter import Perimeter
from corral_operator.gateway.protocol import (
    ROUTED,
    Api,
    BadRequestError,
    Kind,
    api_of_path,
    error_body,
    model_not_found,
    normalize_model_name,
    request_facts,
)
from corral_operator.gateway.proxy import Proxy, forward_headers, upstream_session
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.shutdown import Draining, DrainState


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


def _error(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        error_body(api_of_path(path), status, message), status_code=status, headers=headers
    )


def create_gateway_app(settings: GatewaySettings, backend: Backend | None = None) -> FastAPI:
    metrics = GatewayMetrics()
    version = _version()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_session(settings) as client:
            dispatcher = Dispatcher(settings, backend or default_backend(settings), metrics, client)
            app.state.dispatcher = dispatcher
            app.state.proxy = Proxy(dispatcher, client)
            dispatcher.start()
            try:
                yield
            finally:
                await dispatcher.stop()

    app = FastAPI(
        title="corral gateway",
        version=version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = DrainState()
    app.add_middleware(Draining, state=app.state.drain)
    # Outermost: a request for an unknown host or from a foreign origin goes no further.
    app.add_middleware(
        Perimeter,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )

    def denied(request: Request) -> Response | None:
        dispatcher: Dispatcher = request.app.state.dispatcher
        required = bool(settings.api_key_secret)
        if authorized(request.headers.get("authorization"), dispatcher.api_keys, required):
            return None
        return _error(request.url.path, 401, "invalid or missing API key")

    async def routed(request: Request) -> Response:
        path = request.url.path
        route = ROUTED[path]
        if (refused := denied(request)) is not None:
            return refused
        body = await request.body()
        try:
            facts = request_facts(route, body)
        except BadRequestError as exc:
            metrics.requests.labels(path=path, model="", status="400").inc()
            return _error(path, 400, str(exc))
        dispatcher: Dispatcher = request.app.state.dispatcher
        entry = dispatcher.resolve(facts.model)
        model_label = normalize_model_name(facts.model)
        if entry is None:
            metrics.requests.labels(path=path, model="", status="404").inc()
            return JSONResponse(model_not_found(route.api, facts.model), status_code=404)
        # Each inference request sets its model's keep_alive (none: the server's default).
        keep = keep_alive_seconds(facts.keep_alive)
        dispatcher.touch(entry.server, keep, None if route.kind is Kind.SHOW else entry.name)
        proxy: Proxy = request.app.state.proxy
        try:
            response = await proxy.forward(
                route,
                facts,
                entry.server,
                path,
                forward_headers(request.headers.items()),
                body,
            )
        except QueueFullError:
            metrics.requests.labels(path=path, model=model_label, status="503").inc()
            return _error(
                path,
                503,
                f"server busy, please try again: too many requests are waiting for "
                f"model '{facts.model}' to start",
                headers={"Retry-After": str(settings.retry_after_seconds)},
            )
        metrics.requests.labels(
            path=path, model=model_label, status=str(response.status_code)
        ).inc()
        return response

    for path in ROUTED:
        # A plain Starlette route: the handler takes the Request and returns a Response, so
        # FastAPI's per-request dependency solving and serialization would be pure cost.
        app.add_route(path, routed, methods=["POST"], include_in_schema=False)

    @app.get("/")
    @app.head("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")

    @app.get("/api/version")
    async def api_version() -> dict[str, str]:
        return {"version": version}

    @app.get("/healthz")
    @app.get("/readyz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/api/tags")
    async def tags(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        dispatcher: Dispatcher = request.app.state.dispatcher
        return JSONResponse(ollama_tags(dispatcher.snapshot.listed()))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        dispatcher: Dispatcher = request.app.state.dispatcher
        return JSONResponse(openai_models(dispatcher.snapshot.listed()))

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        dispatcher: Dispatcher = request.app.state.dispatcher
        for entry in dispatcher.snapshot.listed():
            if normalize_model_name(entry.name) == normalize_model_name(model):
                return JSONResponse(openai_model(entry))
        return JSONResponse(model_not_found(Api.OPENAI, model), status_code=404)

    @app.get("/api/ps")
    async def ps(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        dispatcher: Dispatcher = request.app.state.dispatcher
        endpoints = sorted({e for v in dispatcher.snapshot.servers.values() for e in v.endpoints})
        answers = await asyncio.gather(*(_pod_ps(dispatcher.client, e) for e in endpoints))
        return JSONResponse(merge_ps(a for a in answers if a is not None))

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "DELETE", "HEAD", "PUT"])
    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "DELETE", "HEAD", "PUT"])
    async def unrouted(request: Request) -> Response:
        return _error(
            request.url.path,
            404,
            f"{request.method} {request.url.path} is not served by the gateway "
            "(models are managed with Model resources)",
        )

    return app


async def _pod_ps(client: aiohttp.ClientSession, endpoint: str) -> dict[str, Any] | None:
    try:
        async with client.get(
            f"http://{endpoint}/api/ps", timeout=aiohttp.ClientTimeout(total=5.0)
        ) as response:
            data = await response.json(content_type=None) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""The runtime server's FastAPI application: ``create_app(settings)``.

State lives on ``app.state`` (never in module globals), for every router to reach:

- ``app.state.settings`` — the ``RuntimeSettings`` the app was built with;
- ``app.state.store`` — the ``ModelStore`` (Ollama layout) models are resolved from;
- ``app.state.models`` — the ``ModelManager`` that loads, keeps alive and evicts models;
- ``app.state.metrics`` — the app's ``RuntimeMetrics`` (its own Prometheus registry);
- ``app.state.drain`` — the ``DrainState`` a SIGTERM sets draining (``corral serve``).

With no models directory configured, the store is a directory in the user's cache seeded with
the bundled test model (``gemma3:270m``), so a bare ``corral serve`` answers requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_runtime import __version__
from corral_runtime.api import health, ollama, openai
from corral_runtime.api import models as model_management
from corral_runtime.api.disconnect import CancelOnDisconnect
from corral_runtime.api.errors import ApiError, error_response, install_error_handlers
from corral_runtime.api.perimeter import Perimeter, credential_role
from corral_runtime.metrics import RuntimeMetrics
from corral_runtime.settings import RuntimeSettings
from corral_runtime.shutdown import Draining, DrainState
from corral_runtime.startup import Engine, start_engine

log = logging.getLogger(__name__)

# The API paths: JSON bodies, API-key protected, counted in corral_requests_total.
_API_PREFIXES = ("/api/", "/v1/")


class JsonBodies:
    """Request bodies of the APIs: 413 over the size limit (declared or streamed), and JSON
    whatever the declared content type, since Ollama's clients (``curl -d``) often send none.
    Blob uploads (``/api/blobs/``) are model files: neither limited nor JSON."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(_API_PREFIXES)
            or path.startswith("/api/blobs/")
        ):
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            path, ApiError(413, f"request body is larger than {self.limit} bytes")
        )
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        for key, value in headers:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(scope, receive, send)
                return
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        seen = 0
        answered = False

        async def limited_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if not answered:
                        answered = True
                        await too_large(scope, receive, send)
                    # The app sees a client that went away, and its answer goes nowhere.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class AuthorizeAndCount:
    """The API key check and the request metrics, as plain ASGI: a streamed answer's chunks
    pass straight through (Starlette's ``BaseHTTPMiddleware`` would hand each one across a
    task and a memory stream), and a request is counted once its answer is sent."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        metrics: RuntimeMetrics,
        admin_api_key: str | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key or None
        self.admin_api_key = admin_api_key or None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(_API_PREFIXES):
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if credential_role(supplied, self.api_key, self.admin_api_key) is None:
            denied = error_response(path, ApiError(401, "invalid or missing API key"))
            await denied(scope, receive, send)
            return
        # Routes name the model in request.state, which is this dict (shared with the copies
        # of the scope made further in).
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.observe_request(endpoint, str(state.get("model", "")), status)
            log.debug(
                "%s %s -> %d in %.3fs",
                scope.get("method", ""),
                path,
                status,
                time.perf_counter() - started,
            )


def create_app(settings: RuntimeSettings, engine: Engine | None = None) -> FastAPI:
    """The app over ``engine``, started and closed by ``corral serve`` around the web stack
    (``startup.py``); without one, the lifespan starts one before the bind and closes it."""
    metrics = engine.metrics if engine is not None else RuntimeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = engine if engine is not None else start_engine(settings, metrics)
        app.state.store = started.store
        app.state.models = started.manager
        try:
            yield
        finally:
            if started is not engine:
                await started.close()

    app = FastAPI(
        title="corral runtime",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # The schema is public (it holds no secrets), for clients, tools and fuzzers.
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = DrainState()  # set draining by the server on SIGTERM (shutdown.py)
    install_error_handlers(app)
    for router in (ollama.router, openai.router, health.router, model_management.router):
        app.include_router(router)

    app.add_middleware(
        AuthorizeAndCount,
        api_key=settings.api_key,
        admin_api_key=settings.admin_api_key,
        metrics=metrics,
    )
    app.add_middleware(JsonBodies, limit=settings.max_body_bytes)
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(Draining, state=app.state.drain)
    # Outermost: a request for an unknown host or from a foreign origin goes no further.
    app.add_middleware(
        Perimeter,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )
    return app

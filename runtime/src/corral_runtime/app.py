"""The runtime server's FastAPI application: ``create_app(settings)``.

State lives on ``app.state`` (never in module globals), for every router to reach:

- ``app.state.settings`` — the ``RuntimeSettings`` the app was built with;
- ``app.state.store`` — the ``ModelStore`` (Ollama layout) models are resolved from;
- ``app.state.models`` — the ``ModelManager`` that loads, keeps alive and evicts models;
- ``app.state.metrics`` — the app's ``RuntimeMetrics`` (its own Prometheus registry).

With no models directory configured, the store is a directory in the user's cache seeded with
the bundled test model (``gemma3:270m``), so a bare ``corral serve`` answers requests.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_runtime import __version__
from corral_runtime.api import health, ollama, openai
from corral_runtime.api import models as model_management
from corral_runtime.api.disconnect import CancelOnDisconnect
from corral_runtime.api.errors import ApiError, error_response, install_error_handlers
from corral_runtime.engine.manager import ModelManager
from corral_runtime.gpu import probe_gpu
from corral_runtime.metrics import RuntimeMetrics
from corral_runtime.settings import RuntimeSettings, default_models_dir
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TestModelUnavailableError, ensure_test_model

log = logging.getLogger(__name__)

# The API paths: JSON bodies, API-key protected, counted in corral_requests_total.
_API_PREFIXES = ("/api/", "/v1/")


def open_store(settings: RuntimeSettings) -> ModelStore:
    """The configured store; without one, the default store, seeded with the bundled test model
    (when its package is installed) so that ``corral serve`` alone answers."""
    if settings.models is not None:
        return ModelStore(settings.models)
    store = ModelStore(default_models_dir())
    try:
        ensure_test_model(store)
    except TestModelUnavailableError as exc:
        log.warning("%s; serving %s as it is", exc, store.root)
    return store


def _offload_supported() -> bool:
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


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


def create_app(settings: RuntimeSettings) -> FastAPI:
    metrics = RuntimeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        manager = ModelManager(
            store,
            settings,
            probe_gpu(_offload_supported()),
            on_change=lambda m: metrics.loaded_models.set(len(m.loaded())),
            on_load=lambda name, seconds: metrics.model_load_seconds.labels(model=name).observe(
                seconds
            ),
        )
        app.state.store = store
        app.state.models = manager
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(
        title="corral runtime",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in (ollama.router, openai.router, health.router, model_management.router):
        app.include_router(router)

    @app.middleware("http")
    async def count_and_authorize(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if settings.api_key and path.startswith(_API_PREFIXES):
            supplied = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(supplied.encode(), expected.encode()):
                return error_response(path, ApiError(401, "invalid or missing API key"))
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        if path.startswith(_API_PREFIXES):
            model = request.state.model if hasattr(request.state, "model") else ""
            metrics.observe_request(endpoint, model, response.status_code)
        log.debug(
            "%s %s -> %d in %.3fs",
            request.method,
            path,
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    app.add_middleware(JsonBodies, limit=settings.max_body_bytes)
    app.add_middleware(CancelOnDisconnect)
    return app

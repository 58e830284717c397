"""The gateway's routes: the routed endpoints (``/api/generate``, ``/api/chat``,
``/v1/chat/completions``, …) go by their ``model`` field to a pod of the ModelServer that serves
it; the listings are answered from the routing table (``/api/tags``, ``/v1/models``) or gathered
from the pods (``/api/ps``); the rest of ``/api`` and ``/v1`` is not served here.

API keys and the request metrics are not the routes' business: ``middleware.AuthorizeAndCount``
does both in front of every route. A routed request names its model for the metrics in
``request.state.model`` once the model is resolved.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from corral_operator.durations import keep_alive_seconds
from corral_operator.gateway.decisions import unload_answered_here
from corral_operator.gateway.deps import (
    DispatcherDep,
    MetricsDep,
    dispatcher_of,
    proxy_of,
    settings_of,
)
from corral_operator.gateway.dispatcher import QueueFullError
from corral_operator.gateway.errors import error_response
from corral_operator.gateway.listing import (
    listed_model,
    loaded_models,
    ollama_tags,
    openai_model,
    openai_models,
)
from corral_operator.gateway.metrics import CONTENT_TYPE
from corral_operator.gateway.priority import (
    PriorityConfig,
    UnknownPriorityError,
    request_priority,
    with_priority,
)
from corral_operator.gateway.protocol import (
    ROUTED,
    Api,
    BadRequestError,
    Kind,
    model_not_found,
    normalize_model_name,
    request_facts,
    unload_answer,
)
from corral_operator.gateway.proxy import client_headers

router = APIRouter()


async def read_body(receive: Receive) -> bytes:
    """A request's whole body, read from the ASGI channel (as ``Request.body`` does, without
    its stream generator and caching; a client gone before the end raises ClientDisconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def routed(request: Request) -> Response:
    """``answer_routed`` for a request that reached FastAPI's router."""
    return await answer_routed(request.app, request.scope, await request.body())


async def answer_routed(app: Starlette, scope: Scope, body: bytes) -> Response:
    """A request routed by its model: resolved, recorded as activity, then forwarded (or held
    while its server has no ready pod).

    The one hot path is a plain ASGI app (``routed_app``, below): FastAPI's dependency solving
    costs about 67 µs of CPU per request here, a measurable share of the gateway's overhead
    budget, so this reads the same state through the accessors the dependencies use, and the
    scope's headers once (``proxy.client_headers``)."""
    dispatcher, proxy = dispatcher_of(app), proxy_of(app)
    path: str = scope["path"]
    route = ROUTED[path]
    try:
        facts = request_facts(route, body)
    except BadRequestError as exc:
        return error_response(path, 400, str(exc))
    entry = dispatcher.resolve(facts.model)
    if entry is None:
        return JSONResponse(model_not_found(route.api, facts.model), status_code=404)
    # The model the request counts under (``middleware.AuthorizeAndCount``).
    scope.setdefault("state", {})["model"] = normalize_model_name(facts.model)
    # Each inference request sets its model's keep_alive (none: the server's default).
    keep = keep_alive_seconds(facts.keep_alive)
    dispatcher.touch(entry.server, keep, None if route.kind is Kind.SHOW else entry.name)
    if unload_answered_here(facts.unload, dispatcher.server(entry.server)):
        # `ollama stop` of a sleeping server: nothing is loaded, and nothing is woken.
        return JSONResponse(unload_answer(route, facts.model, datetime.now(UTC)))
    view = dispatcher.server(entry.server)
    client = client_headers(scope["headers"])
    try:
        priority = request_priority(
            client.priority,
            client.authorization,
            view.priority if view is not None else PriorityConfig(),
        )
    except UnknownPriorityError as exc:
        return error_response(path, 400, str(exc))
    headers = with_priority(client.forward, priority)
    try:
        return await proxy.forward(route, facts, entry.server, path, headers, body)
    except QueueFullError:
        return error_response(
            path,
            503,
            f"server busy, please try again: too many requests are waiting for "
            f"model '{facts.model}' to start",
            headers={"Retry-After": str(settings_of(app).retry_after_seconds)},
        )


async def routed_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``answer_routed`` as a plain ASGI app, which ``middleware.RoutedDirect`` calls for every
    routed request: FastAPI's router, exception and exit-stack layers have nothing to do for it
    (it raises no HTTP exceptions and declares no dependencies) and cost about 25 µs of CPU per
    request here, and a ``Request`` (its body stream, its ``Headers``) a few more. An exception
    still reaches the server-error layer, as through the router."""
    response = await answer_routed(scope["app"], scope, await read_body(receive))
    await response(scope, receive, send)


# Also routed by the router (for the methods it refuses, and apps without RoutedDirect).
for _path in ROUTED:
    router.add_route(_path, routed, methods=["POST"], include_in_schema=False)


@router.get("/")
@router.head("/")
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running")


@router.get("/api/version")
async def api_version(request: Request) -> dict[str, str]:
    return {"version": request.app.version}


@router.get("/healthz")
@router.get("/readyz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/api/tags")
async def tags(dispatcher: DispatcherDep) -> Response:
    return JSONResponse(ollama_tags(dispatcher.snapshot.listed()))


@router.get("/v1/models")
async def models(dispatcher: DispatcherDep) -> Response:
    return JSONResponse(openai_models(dispatcher.snapshot.listed()))


@router.get("/v1/models/{model:path}")
async def model(model: str, dispatcher: DispatcherDep) -> Response:
    entry = listed_model(dispatcher.snapshot.listed(), model)
    if entry is None:
        return JSONResponse(model_not_found(Api.OPENAI, model), status_code=404)
    return JSONResponse(openai_model(entry))


@router.get("/api/ps")
async def ps(dispatcher: DispatcherDep) -> Response:
    servers = dispatcher.snapshot.servers
    expiry = {
        e: dispatcher.scale_down_at(key) for key, view in servers.items() for e in view.endpoints
    }
    return JSONResponse(await loaded_models(dispatcher.client, expiry, expiry))


@router.api_route("/api/{rest:path}", methods=["GET", "POST", "DELETE", "HEAD", "PUT"])
@router.api_route("/v1/{rest:path}", methods=["GET", "POST", "DELETE", "HEAD", "PUT"])
async def unrouted(request: Request) -> Response:
    """Last: whatever ``/api`` and ``/v1`` path the routes above do not serve."""
    return error_response(
        request.url.path,
        404,
        f"{request.method} {request.url.path} is not served by the gateway "
        "(models are managed with Model resources)",
    )

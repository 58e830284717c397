"""The API key check and the request metrics of every route, as one plain ASGI middleware.

Plain ASGI, not Starlette's ``BaseHTTPMiddleware`` (which hands each chunk of a streamed answer
across a task and a memory stream): a refused request is answered before its body is read, and
a proxied stream passes through chunk by chunk, untouched.

A routed request is counted once, when its answer starts, in ``corral_gateway_requests_total``
by path, model and status. Only the route knows the model (it is in the body): it names it in
``request.state.model``, which is the scope's ``state`` dict made here; a request answered
before its model was resolved (a bad body, an unknown model) counts with an empty model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_operator.gateway.auth import authorized, needs_key
from corral_operator.gateway.errors import error_response
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.protocol import is_routed


class AuthorizeAndCount:
    """Refuses (401, in the API's shape) a request that needs a key and carries none of
    ``keys()``, and counts each routed request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Callable[[], Collection[str]],
        keys_required: bool,
        metrics: GatewayMetrics,
    ) -> None:
        """``keys`` is called per request: the accepted keys change while the gateway runs
        (a key Secret is watched). ``keys_required``: a key Secret is configured, so no key
        known yet means nothing passes (see ``auth.authorized``)."""
        self.app = app
        self.keys = keys
        self.keys_required = keys_required
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if needs_key(method, path) and not authorized(
            Headers(scope=scope).get("authorization"), self.keys(), self.keys_required
        ):
            await error_response(path, 401, "invalid or missing API key")(scope, receive, send)
            return
        if not is_routed(method, path):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                model = str(state.get("model", ""))
                status = str(message["status"])
                self.metrics.requests_by(path, model, status).inc()
            await send(message)

        await self.app(scope, receive, send_and_count)


class RoutedDirect:
    """Sends each routed request (``protocol.is_routed``) straight to ``routed``, every other
    request on to ``app`` (FastAPI's router): the innermost middleware, so that the perimeter,
    the drain, the key check and the count still come first."""

    def __init__(self, app: ASGIApp, *, routed: ASGIApp) -> None:
        self.app = app
        self.routed = routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_routed(scope["method"], scope["path"]):
            await self.routed(scope, receive, send)
        else:
            await self.app(scope, receive, send)

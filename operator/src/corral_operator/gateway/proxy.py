"""Forwarding one routed request to a runtime pod: pick, retry before the first byte, hold while
the server has no ready pod (with heartbeats on streams), then relay the answer unbuffered.

Requests reach the pods through ``upstream.UpstreamPool`` (kept-alive connections, httptools'
parser, one write per request); the gateway's other calls to pods use the aiohttp session made
here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral_operator.gateway.affinity import Prefix
from corral_operator.gateway.decisions import hold_failure_message
from corral_operator.gateway.dispatcher import Dispatcher, Hold, Lease
from corral_operator.gateway.priority import PRIORITY_HEADER, priority_of
from corral_operator.gateway.protocol import (
    RequestFacts,
    Route,
    error_body,
    heartbeat,
    inband_error,
    stream_media_type,
)
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ServerKey
from corral_operator.gateway.upstream import NotDeliveredError, UpstreamPool, UpstreamResponse

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # A browser page's origin is the gateway's to judge: the pods refuse foreign origins,
        # and they are called by the gateway, not by the page.
        "origin",
    }
)
# Headers the session would add on its own: the pod sees the client's, or none.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

Attempt = tuple[Lease, UpstreamResponse]


def upstream_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The session for the gateway's own calls to pods (probes, scrapes, ``/api/ps``):
    unlimited pooled connections, no read timeout, bodies as they are (no decompression). Idle
    connections are dropped before the runtime's server drops them (uvicorn: after 5 s)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_seconds),
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
    )


def forward_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers that may cross the proxy (hop-by-hop ones and the length are per connection)."""
    return [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]


@dataclass(frozen=True, slots=True)
class ClientHeaders:
    """What the gateway reads of a routed request's headers."""

    forward: list[tuple[str, str]]
    """The headers that may cross the proxy, as ``forward_headers`` keeps them."""
    priority: str | None
    """The first ``X-Corral-Priority``, if any."""
    authorization: str | None
    """The first ``Authorization``, if any."""


def client_headers(raw: Iterable[tuple[bytes, bytes]]) -> ClientHeaders:
    """A request's headers as the ASGI scope holds them, decoded once: those to forward and the
    two the gateway decides by (a request's headers are read once, where a ``Headers`` view
    decoded every one for the forwarded list and searched the list again for each lookup)."""
    forward: list[tuple[str, str]] = []
    priority: str | None = None
    authorization: str | None = None
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        lowered = name.lower()
        if lowered == PRIORITY_HEADER and priority is None:
            priority = value
        elif lowered == "authorization" and authorization is None:
            authorization = value
        if lowered not in _HOP_BY_HOP:
            forward.append((name, value))
    return ClientHeaders(forward, priority, authorization)


def upstream_error_message(body: bytes, status: int) -> str:
    """The message of a pod's error answer, whichever API shaped it."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    text = body.decode("utf-8", "replace").strip()
    return text or f"upstream answered {status}"


class Proxy:
    def __init__(self, dispatcher: Dispatcher, pool: UpstreamPool) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.settings = dispatcher.settings

    async def forward(
        self,
        route: Route,
        facts: RequestFacts,
        key: ServerKey,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Response:
        """Answer a request whose model is served by ``key``. Raises QueueFullError when it
        would have to be held and the model's queue is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.hold_deadline_seconds
        tried: set[str] = set()
        prefix = self.dispatcher.prefix_of(key, facts.model, facts.text)
        got = await self._attempt(key, tried, path, headers, body, prefix=prefix)
        if got is not None:
            return await self._respond(got, facts)
        hold = self.dispatcher.hold(facts.model, key, priority_of(headers))
        started = time.monotonic()
        if not facts.stream:
            try:
                got = await self._wait(key, tried, deadline, path, headers, body, hold, prefix)
            finally:
                hold.release()
            if got is None:
                return self._deadline_error(route, facts, key, time.monotonic() - started)
            return await self._respond(got, facts)
        # A short wait first: a pod that is nearly ready answers with its own status line.
        quiet_until = min(deadline, loop.time() + self.settings.heartbeat_seconds)
        try:
            got = await self._wait(key, tried, quiet_until, path, headers, body, hold, prefix)
        except BaseException:
            hold.release()
            raise
        if got is not None:
            hold.release()
            return await self._respond(got, facts)
        stream = self._held_stream(hold, route, facts, key, deadline, path, headers, body, prefix)
        return StreamingResponse(stream, status_code=200, media_type=stream_media_type(route.api))

    async def _attempt(
        self,
        key: ServerKey,
        tried: set[str],
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        hold: Hold | None = None,
        prefix: Prefix = (),
    ) -> Attempt | None:
        """Send to the ready pod not yet tried that the dispatcher picks (for ``prefix``, the
        request's text hashes); on a failure before any byte came back (or a busy pod while
        another is free) try the next. None when none is left.

        A held request stops counting as held once it is leased to a pod: counted as both, it
        would look like twice the load and ask for pods nobody needs."""
        while True:
            endpoint = self.dispatcher.try_pick(key, tried, prefix)
            if endpoint is None:
                return None
            if hold is not None:
                hold.release()
            lease = self.dispatcher.lease(key, endpoint, prefix)
            try:
                response = await self.pool.post(endpoint, path, headers, body)
            except NotDeliveredError:
                lease.release()
                tried.add(endpoint)
                self.dispatcher.metrics.retries.inc()
                continue
            except BaseException:
                lease.release()
                raise
            if response.status == 503 and self.dispatcher.try_pick(key, {*tried, endpoint}):
                response.release()
                lease.release()
                tried.add(endpoint)
                self.dispatcher.metrics.retries.inc()
                continue
            return lease, response

    async def _wait(
        self,
        key: ServerKey,
        tried: set[str],
        until: float,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        hold: Hold | None = None,
        prefix: Prefix = (),
    ) -> Attempt | None:
        """Attempts whenever a pod is ready, until one takes the request or ``until`` passes.
        Pods that failed are retried each heartbeat (a restarted pod may keep its address)."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            step = min(until, loop.time() + self.settings.heartbeat_seconds)
            if await self.dispatcher.wait_for_endpoint(key, tried, step, hold) is None:
                tried.clear()
                continue
            got = await self._attempt(key, tried, path, headers, body, hold, prefix)
            if got is not None:
                return got
        return None

    async def _respond(self, got: Attempt, facts: RequestFacts) -> Response:
        lease, upstream = got
        headers = dict(forward_headers(upstream.headers))
        if not facts.stream:
            try:
                content = await upstream.read()
            finally:
                upstream.release()
                lease.release()
            return Response(content, status_code=upstream.status, headers=headers)
        return StreamingResponse(
            self._relay(lease, upstream), status_code=upstream.status, headers=headers
        )

    async def _relay(self, lease: Lease, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.iter_chunks():
                yield chunk
        finally:
            upstream.release()
            lease.release()

    async def _held_stream(
        self,
        hold: Hold,
        route: Route,
        facts: RequestFacts,
        key: ServerKey,
        deadline: float,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        prefix: Prefix = (),
    ) -> AsyncIterator[bytes]:
        """A held stream: heartbeats until a pod takes the request, then its output; at the
        deadline an in-band error (the 200 status line is long gone)."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        tried: set[str] = set()
        try:
            got: Attempt | None = None
            while got is None:
                yield heartbeat(route, facts.model, datetime.now(UTC))
                if loop.time() >= deadline:
                    message = self._failure(facts, key, time.monotonic() - started)
                    self.dispatcher.metrics.rejected.labels(
                        model=facts.model, reason="deadline"
                    ).inc()
                    yield inband_error(route.api, message)
                    return
                step = min(deadline, loop.time() + self.settings.heartbeat_seconds)
                got = await self._wait(key, tried, step, path, headers, body, hold, prefix)
            hold.release()
            lease, upstream = got
            try:
                if upstream.status != 200:
                    error = await upstream.read()
                    yield inband_error(route.api, upstream_error_message(error, upstream.status))
                    return
                async for chunk in upstream.iter_chunks():
                    yield chunk
            finally:
                upstream.release()
                lease.release()
        finally:
            hold.release()

    def _failure(self, facts: RequestFacts, key: ServerKey, waited: float) -> str:
        view = self.dispatcher.server(key)
        waited_total = waited + self.settings.heartbeat_seconds if facts.stream else waited
        reason = view.status_message if view is not None else "its ModelServer is gone"
        return hold_failure_message(
            facts.model, min(waited_total, self.settings.hold_deadline_seconds), reason
        )

    def _deadline_error(
        self, route: Route, facts: RequestFacts, key: ServerKey, waited: float
    ) -> Response:
        self.dispatcher.metrics.rejected.labels(model=facts.model, reason="deadline").inc()
        message = self._failure(facts, key, waited)
        return JSONResponse(error_body(route.api, 504, message), status_code=504)

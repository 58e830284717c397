"""The client a proxied request reaches its pod with: HTTP/1.1 over pooled keep-alive
connections, each an asyncio protocol whose answers httptools parses.

It does only what proxying needs (a POST with a body; an answer's status, headers and body as
it arrives), where aiohttp's session builds a request object, a URL, cookie and header
structures and timers for every call: on this machine aiohttp took about 200 µs of CPU for a
small request and its answer, a plain asyncio exchange about 60 µs, out of a gateway overhead
budget of 1 ms. The gateway's other calls to pods (probes, scrapes, ``/api/ps``) keep aiohttp.

A request written on a connection the pod had closed, or refused, or not connected within the
connect timeout, never reached the pod: ``NotDeliveredError``, safe to send to another.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable

import httptools

# Buffered answer bytes above which a connection stops reading until the proxy catches up.
_HIGH_WATER = 256 * 1024


class NotDeliveredError(ConnectionError):
    """The pod never took the request: refused, not connected in time, or a pooled connection
    the pod closed before any answer came."""


class UpstreamPayloadError(ConnectionError):
    """The pod's connection ended in the middle of an answer's body."""


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 address with or without brackets) as host and port."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def request_head(
    endpoint: str, path: str, headers: Iterable[tuple[str, str]], length: int
) -> bytes:
    """A POST's request line and headers: the pod's ``Host``, the forwarded ``headers`` (without
    hop-by-hop ones or a length: ``proxy.forward_headers``) and the body's length."""
    lines = [f"POST {path} HTTP/1.1\r\nhost: {endpoint}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(f"content-length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


class UpstreamResponse:
    """A pod's answer: status and headers once they came, the body as it arrives."""

    def __init__(self, connection: _Connection, status: int, headers: list[tuple[str, str]]):
        self._connection = connection
        self.status = status
        self.headers = headers
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the connection ---------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._complete = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the proxy -------------------------------------------------------------------

    def at_eof(self) -> bool:
        """Whether the whole body came and was read."""
        return self._complete and self._error is None and not self._chunks

    async def _next(self) -> bytes | None:
        """Every byte buffered now (waiting for some), or None at the end of the body."""
        while not self._chunks:
            if self._complete:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._connection.resume_reading()
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: all that is buffered at each step, never empty."""
        while (data := await self._next()) is not None:
            yield data

    async def read(self) -> bytes:
        """The whole body."""
        chunks: list[bytes] = []
        while (data := await self._next()) is not None:
            chunks.append(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when the body was read to
        the end (and the pod keeps it open), and is closed otherwise, so that the pod sees a
        client that left and stops working."""
        self._connection.done(reusable=self.at_eof())


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a pod, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, endpoint: str) -> None:
        self._pool = pool
        self.endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[str, str]] = []
        self._response: UpstreamResponse | None = None
        self._until_close = False
        self._keep_alive = False
        self._paused = False

    # -- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamPayloadError(f"{self.endpoint} answered with bad HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._response is not None and self._until_close and not self._response._complete:
            self._response._finish()  # a body without length ends with its connection
            self._response = None
        self._fail(None)

    def _fail(self, error: BaseException | None) -> None:
        """The connection ended (``error`` None) or broke: whoever waits for its answer learns
        so. Closed before any answer, the pod never took the request (``NotDeliveredError``:
        another pod may); an answer that is not HTTP came from a pod that did take it, so it is
        the error itself, never retried elsewhere."""
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error or NotDeliveredError(f"{self.endpoint} closed the connection"))
        response, self._response = self._response, None
        if response is not None and not response._complete:
            response._finish(error or UpstreamPayloadError(f"{self.endpoint} closed mid-answer"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        names = {name.lower() for name, _ in self._headers}
        self._until_close = not names & {"content-length", "transfer-encoding"}
        self._keep_alive = self._parser.should_keep_alive()
        status = self._parser.get_status_code()
        response = UpstreamResponse(self, status, self._headers)
        self._headers = []
        self._response = response
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response._finish()

    # -- the pool's side ---------------------------------------------------------------------

    async def send(self, head: bytes, body: bytes) -> UpstreamResponse:
        """Write the request in one piece and wait for the answer's status and headers."""
        assert self._transport is not None
        self._head = asyncio.get_running_loop().create_future()
        self._transport.write(head + body)
        return await self._head

    def pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def done(self, reusable: bool) -> None:
        if reusable and self._keep_alive and not self.closed:
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class UpstreamPool:
    """Kept-alive connections to the pods, any number per pod. An idle connection is dropped
    after ``idle_seconds``, before the runtime's server drops it (uvicorn: after 5 s)."""

    def __init__(self, connect_timeout: float, idle_seconds: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self._idle: dict[str, list[_Connection]] = {}

    async def post(
        self, endpoint: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> UpstreamResponse:
        """Send a POST to ``endpoint``; its answer once the status and headers came. Raises
        NotDeliveredError where the pod never took it."""
        head = request_head(endpoint, path, headers, len(body))
        connection = self._take(endpoint) or await self._connect(endpoint)
        try:
            return await connection.send(head, body)
        except BaseException:
            connection.close()
            raise

    def _take(self, endpoint: str) -> _Connection | None:
        """The most recently used idle connection to ``endpoint`` still fresh, if any."""
        idle = self._idle.get(endpoint)
        stale = time.monotonic() - self.idle_seconds
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since > stale:
                return connection
            connection.close()
        return None

    async def _connect(self, endpoint: str) -> _Connection:
        host, port = split_endpoint(endpoint)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, endpoint), host, port
                )
        except (OSError, TimeoutError) as exc:
            raise NotDeliveredError(f"{endpoint}: {exc!r}") from exc
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.endpoint, []).append(connection)

    def forget(self, connection: _Connection) -> None:
        """A closed connection leaves the idle ones."""
        idle = self._idle.get(connection.endpoint)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.endpoint]

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in list(idle):
                connection.close()
        self._idle.clear()

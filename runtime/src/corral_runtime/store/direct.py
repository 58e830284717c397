"""Direct connections for a blob's parts once its download URL is known.

A registry answers a blob request with a redirect to a CDN URL that needs no credentials (a
signed URL). The parts fetched from it go over one kept-alive http.client connection per
download worker, with bodies read straight into one reused buffer: about half the CPU of the
httpx client, whose parser copies each block several times; at loopback or in-cluster speeds that
CPU is what a pull waits for. Anything unusual (a proxy in the environment, another scheme, a
redirect) is left to the httpx client, which handles it all.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

# Bytes read per recv (and the reused buffer's size).
BODY_READ_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """A Range GET's answer, from either client: status, final URL, headers, body blocks."""

    status: int
    url: str
    header: Callable[[str], str | None]
    # Each block is valid until the next one is taken (the direct lane reuses one buffer).
    blocks: Iterator[bytes | memoryview]
    close: Callable[[], None]


class DirectTransportError(Exception):
    """A network failure on a direct connection (retried like httpx's transport errors)."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


class DirectLane:
    """One worker's keep-alive connection for Range GETs of a blob's resolved download URL.

    ``open`` answers None where the httpx client must do the request instead.
    """

    def __init__(
        self,
        context: Callable[[], ssl.SSLContext] | None,
        timeout: float,
        user_agent: str | None,
    ) -> None:
        self._context = context
        self._timeout = timeout
        self._user_agent = user_agent
        self._origin: tuple[str, str, int] | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._used = False
        self._buffer = memoryview(bytearray(BODY_READ_SIZE))

    def open(self, url: str, start: int, end: int) -> Reply | None:
        if self._context is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.username or parts.password:
            return None
        # An explicit port: http.client would read an IPv6 literal's last group as one.
        origin = (parts.scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme])
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = {"Range": f"bytes={start}-{end - 1}"}  # http.client adds identity encoding
        if self._user_agent:
            headers["User-Agent"] = self._user_agent
        # A kept-alive connection the server closed meanwhile fails at once: one fresh try.
        for fresh in (False, True):
            conn = self._connection(origin, fresh)
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as exc:
                reused = self._used
                self._drop()
                if fresh or not reused:
                    raise DirectTransportError(f"{url}: {exc}") from exc
        self._used = True
        if 300 <= response.status < 400:
            response.close()
            self._drop()
            return None

        buffer = self._buffer
        complete = False

        def blocks() -> Iterator[memoryview]:
            # Each block is what one recv brought (a stalled server leaves nothing unwritten):
            # readinto1 on the response's buffered socket file, whose buffer holds at most the
            # start of the body, counting the body's length here.
            nonlocal complete
            fp, remaining = response.fp, response.length
            if fp is None or remaining is None or response.chunked:
                remaining = None  # let http.client delimit the body
            while True:
                try:
                    if remaining is None:
                        n = response.readinto(buffer)
                    else:
                        n = fp.readinto1(buffer[: min(len(buffer), remaining)]) if remaining else 0
                except (OSError, http.client.HTTPException) as exc:
                    raise DirectTransportError(f"{url}: {exc}") from exc
                if not n:
                    complete = remaining == 0
                    return
                if remaining is not None:
                    remaining -= n
                yield buffer[:n]

        def close() -> None:
            response.close()
            if not complete:  # the connection is not at a message boundary: no more requests
                self._drop()

        return Reply(response.status, url, response.getheader, blocks(), close)

    def _connection(self, origin: tuple[str, str, int], fresh: bool) -> http.client.HTTPConnection:
        if self._conn is not None and (fresh or origin != self._origin):
            self._drop()
        if self._conn is None:
            scheme, host, port = origin
            if scheme == "https":
                assert self._context is not None
                self._conn = http.client.HTTPSConnection(
                    host, port, timeout=self._timeout, context=self._context()
                )
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
            self._origin = origin
            self._used = False
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()

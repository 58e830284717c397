"""Writes of one event-loop step leave in one piece: a response's head with its body.

uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and the body in a second write when it sends the body: two send calls,
and a client woken for a head whose body follows microseconds later. The gateway's connections
hold what is written during a loop step and send it at the end of that step (``call_soon``),
so a whole small answer goes out in one send; a stream's chunks, each written in a step of its
own, leave as they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class StepTransport:
    """A transport whose writes within one loop step are sent together at its end."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a ``StepTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(StepTransport(transport, self.loop))  # type: ignore[arg-type]

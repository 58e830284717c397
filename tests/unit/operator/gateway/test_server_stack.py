"""The gateway's own server stack (corral_operator.gateway.__main__ and .coalesce): httptools
where it is installed, whatever uvicorn's "auto" would pick for another server in the same
environment, and the writes of one loop step sent together (a response's head with its body),
a stream's chunks still as they come."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from corral_operator.gateway.__main__ import http_protocol
from corral_operator.gateway.coalesce import CoalescingHttpToolsProtocol, StepTransport

pytestmark = pytest.mark.unit


def test_httptools_parses_where_it_is_installed_else_h11() -> None:
    assert http_protocol(True) is CoalescingHttpToolsProtocol
    assert http_protocol(False) == "h11"


def test_httptools_is_installed_with_the_operator() -> None:
    # A dependency of corral-operator: without it the gateway falls back to the slower h11.
    assert importlib.util.find_spec("httptools") is not None


async def test_writes_of_one_step_leave_together_at_its_end() -> None:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    step = StepTransport(transport, loop)
    step.write(b"HTTP/1.1 200 OK\r\n\r\n")
    step.write(b"body")
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # nothing sent yet
    await asyncio.sleep(0)
    assert theirs.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    step.write(b"last")
    step.close()  # sends what is held first
    await asyncio.sleep(0.05)
    assert theirs.recv(100) == b"last"
    theirs.close()


@contextlib.asynccontextmanager
async def serve(app: object) -> AsyncIterator[int]:
    """``app`` under uvicorn with the gateway's protocol on a free port; yields the port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=http_protocol(True), log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn's server offers no event for it)
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_a_stream_through_the_gateways_protocol_leaves_chunk_by_chunk() -> None:
    second = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await second.wait()
        await send({"type": "http.response.body", "body": b"second"})

    async with serve(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        received = b""
        while not received.endswith(b"5\r\nfirst\r\n"):  # before the app sends any more
            received += await asyncio.wait_for(reader.read(1000), 5)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        second.set()
        while not received.endswith(b"0\r\n\r\n"):
            received += await asyncio.wait_for(reader.read(1000), 5)
        assert received.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")
        writer.close()

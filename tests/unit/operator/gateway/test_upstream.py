"""The proxy's client to the pods (``gateway.upstream``), against real servers on loopback:
kept-alive connections reused, a request the pod never took told apart from one it did, a
stream passed on as it arrives, and a connection closed when its answer is left unread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from corral_operator.gateway.upstream import (
    NotDeliveredError,
    UpstreamPayloadError,
    UpstreamPool,
    request_head,
    split_endpoint,
)

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def pod(handler: Handler) -> AsyncIterator[str]:
    """A server on a free loopback port answering with ``handler``; yields its endpoint."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_the_request_head_names_the_pod_and_the_length() -> None:
    head = request_head("10.0.0.7:8080", "/api/chat", [("authorization", "Bearer k")], 12)
    assert head == (
        b"POST /api/chat HTTP/1.1\r\nhost: 10.0.0.7:8080\r\n"
        b"authorization: Bearer k\r\ncontent-length: 12\r\n\r\n"
    )


def test_endpoints_split_into_host_and_port() -> None:
    assert split_endpoint("10.0.0.7:8080") == ("10.0.0.7", 8080)
    assert split_endpoint("[fd00::7]:8080") == ("fd00::7", 8080)
    assert split_endpoint("fd00::7:8080") == ("fd00::7", 8080)


async def test_answers_come_back_on_one_kept_alive_connection() -> None:
    connections = 0
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(head + body)
            writer.write(answer(body.upper(), b"x-pod: a\r\n"))

    pool = UpstreamPool(connect_timeout=1)
    async with pod(handler) as endpoint:
        for text in (b'{"a": 1}', b'{"b": 2}'):
            response = await pool.post(endpoint, "/api/generate", [("x-c", "1")], text)
            assert response.status == 200
            assert ("x-pod", "a") in response.headers
            assert await response.read() == text.upper()
            assert response.at_eof()
            response.release()
        pool.close()
    assert connections == 1
    assert seen[0].startswith(b"POST /api/generate HTTP/1.1\r\nhost: 127.0.0.1:")
    assert seen[0].endswith(b'x-c: 1\r\ncontent-length: 8\r\n\r\n{"a": 1}')


async def test_a_pod_that_closes_without_answering_did_not_take_the_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    pool = UpstreamPool(connect_timeout=1)
    async with pod(handler) as endpoint:
        with pytest.raises(NotDeliveredError):
            await pool.post(endpoint, "/api/chat", [], b"{}")


async def test_an_answer_that_is_not_http_is_an_error_not_a_request_to_send_elsewhere() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"\x00\xffnot an HTTP answer\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    pool = UpstreamPool(connect_timeout=1)
    async with pod(handler) as endpoint:
        with pytest.raises(UpstreamPayloadError, match="bad HTTP") as caught:
            await pool.post(endpoint, "/api/chat", [], b"{}")
    assert not isinstance(caught.value, NotDeliveredError)


async def test_a_refused_connection_is_not_delivered() -> None:
    async with pod(lambda r, w: asyncio.sleep(0)) as endpoint:
        pass  # the port is free again: nothing listens there
    with pytest.raises(NotDeliveredError):
        await UpstreamPool(connect_timeout=1).post(endpoint, "/api/chat", [], b"{}")


async def test_a_connection_the_pod_closed_while_idle_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        # then closes it, as uvicorn does with a connection idle past its keep-alive

    pool = UpstreamPool(connect_timeout=1)
    async with pod(handler) as endpoint:
        for _ in range(2):
            response = await pool.post(endpoint, "/api/chat", [], b"{}")
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.05)  # the close reaches the pool
    assert connections == 2


async def test_a_stream_is_passed_on_as_it_arrives_and_a_cut_one_fails() -> None:
    second = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await second.wait()
        writer.write(b"6\r\nsecond\r\n")
        await writer.drain()
        # and closes it without the last chunk

    async with pod(handler) as endpoint:
        response = await UpstreamPool(connect_timeout=1).post(endpoint, "/api/chat", [], b"{}")
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"first"  # before the pod sent any more
        second.set()
        assert await anext(chunks) == b"second"
        with pytest.raises(UpstreamPayloadError):
            await anext(chunks)
        assert not response.at_eof()


async def test_an_answer_left_unread_closes_its_connection() -> None:
    gone = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await reader.read()  # the client's end of the connection
        gone.set()

    pool = UpstreamPool(connect_timeout=1)
    async with pod(handler) as endpoint:
        response = await pool.post(endpoint, "/api/chat", [], b"{}")
        assert await anext(response.iter_chunks()) == b"a"
        response.release()
        await asyncio.wait_for(gone.wait(), 5)

"""What the gateway passes on to a pod: the client's own headers, less the connection's and
the browser's Origin (a runtime pod refuses origins it does not know)."""

from __future__ import annotations

import pytest

from corral_operator.gateway.proxy import client_headers, forward_headers

pytestmark = pytest.mark.unit


def test_origin_host_and_hop_by_hop_headers_stay_at_the_gateway() -> None:
    headers = [
        ("Authorization", "Bearer k"),
        ("Content-Type", "application/json"),
        ("Origin", "https://chat.example.org"),
        ("Host", "corral-gateway.corral-system.svc"),
        ("Connection", "keep-alive"),
        ("Content-Length", "12"),
        ("X-Request-Id", "r-1"),
    ]
    assert forward_headers(headers) == [
        ("Authorization", "Bearer k"),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "r-1"),
    ]


def test_client_headers_are_decoded_once_into_what_is_forwarded_and_what_decides() -> None:
    raw = [
        (b"host", b"gateway:11434"),
        (b"authorization", b"Bearer k"),
        (b"x-corral-priority", b"batch"),
        (b"connection", b"keep-alive"),
        (b"content-length", b"12"),
        (b"x-request-id", b"r-\xe9"),
        (b"x-corral-priority", b"interactive"),
        (b"authorization", b"Bearer other"),
    ]
    read = client_headers(raw)
    assert read.priority == "batch"
    assert read.authorization == "Bearer k"
    assert read.forward == [
        ("authorization", "Bearer k"),
        ("x-corral-priority", "batch"),
        ("x-request-id", "r-\xe9"),
        ("x-corral-priority", "interactive"),
        ("authorization", "Bearer other"),
    ]
    assert read.forward == forward_headers(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in raw
    )

"""What the gateway passes on to a pod: the client's own headers, less the connection's and
the browser's Origin (a runtime pod refuses origins it does not know)."""

from __future__ import annotations

import pytest

from corral_operator.gateway.proxy import forward_headers

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

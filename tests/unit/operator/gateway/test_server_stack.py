"""The gateway's own server stack (corral_operator.gateway.__main__): httptools where it is
installed, whatever uvicorn's "auto" would pick for another server in the same environment."""

from __future__ import annotations

import importlib.util

import pytest

from corral_operator.gateway.__main__ import http_protocol

pytestmark = pytest.mark.unit


def test_httptools_parses_where_it_is_installed_else_h11() -> None:
    assert http_protocol(True) == "httptools"
    assert http_protocol(False) == "h11"


def test_httptools_is_installed_with_the_operator() -> None:
    # A dependency of corral-operator: without it the gateway falls back to the slower h11.
    assert importlib.util.find_spec("httptools") is not None

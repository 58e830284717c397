"""The gateway's perimeter decisions (corral_operator.gateway.perimeter): which Host is served
depending on where the gateway listens (Ollama's allowedHostsMiddleware), which Origin a browser
may call from, and the 403s, CORS answers and preflights of the ASGI layer in the whole app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.perimeter import (
    bound_to_loopback,
    host_allowed,
    host_name,
    origin_allowed,
)
from corral_operator.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

SERVICE = [
    "corral-gateway",
    "corral-gateway.corral-system",
    "corral-gateway.corral-system.svc",
    "corral-gateway.corral-system.svc.cluster.local",
]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:11434", "::1"),
        ("::1", "::1"),
        ("10.1.2.3:8080", "10.1.2.3"),
    ],
)
def test_host_name_drops_port_brackets_and_final_dot(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.7", False),
        ("gateway.example.com", False),
    ],
)
def test_bound_to_loopback(bind: str, loopback: bool) -> None:
    assert bound_to_loopback(bind) is loopback


# (Host header, allowed_hosts, bind address, served)
HOSTS: list[tuple[str | None, list[str], str, bool]] = [
    # Bound to loopback: addresses, localhost names, the bound name and allowed_hosts only.
    (None, [], "127.0.0.1", True),
    ("", [], "127.0.0.1", True),
    ("localhost:11434", [], "127.0.0.1", True),
    ("LOCALHOST.", [], "127.0.0.1", True),
    ("app.localhost", [], "127.0.0.1", True),
    ("127.0.0.1:11434", [], "127.0.0.1", True),
    ("[::1]:11434", [], "127.0.0.1", True),
    ("10.244.1.7:11434", [], "127.0.0.1", True),
    ("evil.example.com", [], "127.0.0.1", False),
    ("evil.example.com:11434", [], "127.0.0.1", False),
    ("localhost.evil.example.com", [], "127.0.0.1", False),
    ("127.0.0.1.nip.io", [], "127.0.0.1", False),
    ("printer.local", [], "127.0.0.1", False),  # Ollama serves .local and .internal; we do not
    ("ollama.example.com", ["ollama.example.com"], "127.0.0.1", True),
    ("a.b.example.org:80", [".example.org"], "127.0.0.1", True),
    ("example.org", [".example.org"], "127.0.0.1", True),
    ("notexample.org", [".example.org"], "127.0.0.1", False),
    ("anything.example", ["*"], "::1", True),
    ("anything.example", [], "myhost.lan", True),  # a name that is not loopback: every Host
    ("evil.example.com", [], "localhost", False),
    # Bound to any other address: every Host, until allowed_hosts is set.
    ("evil.example.com", [], "0.0.0.0", True),
    ("corral.example.com", [], "10.0.0.7", True),
    ("evil.example.com", SERVICE, "0.0.0.0", False),
    ("corral-gateway.corral-system.svc:11434", SERVICE, "0.0.0.0", True),
    ("CORRAL-GATEWAY", SERVICE, "0.0.0.0", True),
    ("10.244.1.7:11434", SERVICE, "0.0.0.0", True),  # the kubelet's probes, by pod IP
    ("localhost:11434", SERVICE, "0.0.0.0", True),  # kubectl port-forward
    ("corral-gateway.corral-system.svc.evil.example.com", SERVICE, "0.0.0.0", False),
    ("2130706433", SERVICE, "0.0.0.0", False),  # not an address to Python: a name, unknown
]


@pytest.mark.parametrize(("header", "allowed", "bind", "served"), HOSTS)
def test_host_allowed(header: str | None, allowed: list[str], bind: str, served: bool) -> None:
    assert host_allowed(header, allowed, bind) is served


def test_the_bound_name_is_served_where_it_is_checked() -> None:
    assert host_allowed("myhost.lan:11434", ["x.example"], "myhost.lan")
    assert not host_allowed("other.lan", ["x.example"], "myhost.lan")


# (Origin, allowed_origins, allowed)
ORIGINS: list[tuple[str, list[str], bool]] = [
    ("http://localhost", [], True),
    ("http://localhost:3000", [], True),
    ("https://127.0.0.1:8443", [], True),
    ("http://[::1]:5173", [], True),
    ("app://obsidian.md", [], True),
    ("vscode-webview://abc", [], True),
    ("https://evil.example.com", [], False),
    ("http://localhost.evil.example.com", [], False),
    ("http://localhost:1.evil.example", [], False),
    ("null", [], False),
    ("https://chat.example.com", ["https://chat.example.com"], True),
    ("https://CHAT.example.com", ["https://chat.example.com"], True),
    ("https://chat.example.com:8443", ["https://chat.example.com"], False),
    ("https://a.chat.example.com", ["https://*.chat.example.com"], True),
    ("https://evil.com/x.chat.example.com", ["https://*.chat.example.com"], False),
    ("https://anything.example", ["*"], True),
]


@pytest.mark.parametrize(("origin", "allowed", "ok"), ORIGINS)
def test_origin_allowed(origin: str, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok


def test_lists_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_GATEWAY_ALLOWED_HOSTS", "a.example, .b.example,")
    monkeypatch.setenv("CORRAL_GATEWAY_ALLOWED_ORIGINS", "https://chat.example.com")
    monkeypatch.setenv("CORRAL_GATEWAY_GRACEFUL_SHUTDOWN_SECONDS", "45")
    settings = GatewaySettings()
    assert settings.allowed_hosts == ["a.example", ".b.example"]
    assert settings.allowed_origins == ["https://chat.example.com"]
    assert settings.graceful_shutdown_seconds == 45


# -- the ASGI layer, in the whole app ------------------------------------------------------


@pytest.fixture
async def loopback_gateway() -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings.model_validate(
        {
            "host": "127.0.0.1",
            "allowed_origins": ["https://chat.example.com"],
            "static_servers": {"local": {"models": ["gemma3:270m"], "endpoints": []}},
        }
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


async def test_unknown_host_is_403_in_each_shape(loopback_gateway: httpx.AsyncClient) -> None:
    rebound = {"Host": "evil.example.com:11434", "Origin": "http://evil.example.com:11434"}
    tags = await loopback_gateway.get("/api/tags", headers=rebound)
    assert tags.status_code == 403
    assert tags.json() == {
        "error": "host 'evil.example.com' is not allowed; "
        "allow it with CORRAL_GATEWAY_ALLOWED_HOSTS"
    }
    models = await loopback_gateway.get("/v1/models", headers=rebound)
    assert models.status_code == 403
    assert models.json()["error"]["type"] == "permission_error"
    assert (await loopback_gateway.get("/api/tags")).status_code == 200


async def test_foreign_origin_is_403_and_allowed_origin_gets_cors(
    loopback_gateway: httpx.AsyncClient,
) -> None:
    foreign = await loopback_gateway.get("/api/tags", headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert "origin 'https://evil.example' is not allowed" in foreign.json()["error"]
    assert "access-control-allow-origin" not in foreign.headers
    allowed = await loopback_gateway.get(
        "/v1/models", headers={"Origin": "https://chat.example.com"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert allowed.headers["vary"] == "Origin"


async def test_preflight(loopback_gateway: httpx.AsyncClient) -> None:
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    preflight = await loopback_gateway.options(
        "/v1/chat/completions", headers={"Origin": "http://localhost:5173", **asked}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    refused = await loopback_gateway.options(
        "/v1/chat/completions", headers={"Origin": "https://evil.example", **asked}
    )
    assert refused.status_code == 403

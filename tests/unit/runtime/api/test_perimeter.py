"""The runtime's perimeter decisions: which Host and Origin values are served, and what each
credential may do (corral_runtime.api.perimeter)."""

from __future__ import annotations

import pytest

from corral_runtime.api.perimeter import (
    Role,
    credential_role,
    host_allowed,
    host_name,
    origin_allowed,
)
from corral_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit

SERVICE_NAMES = [
    "corral-srv",
    "corral-srv.team",
    "corral-srv.team.svc",
    "corral-srv.team.svc.cluster.local",
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
    "header",
    [
        None,
        "",
        "localhost",
        "LOCALHOST:11434",
        "localhost.:11434",
        "app.localhost",
        "127.0.0.1:11434",
        "127.8.9.10",
        "[::1]:11434",
        "10.244.1.7:8080",  # a pod IP, as the kubelet's probes and the gateway send it
        "[fd00::7]:8080",
        "0.0.0.0:11434",
    ],
)
def test_addresses_and_loopback_names_are_served(header: str | None) -> None:
    assert host_allowed(header, [], "127.0.0.1")


@pytest.mark.parametrize(
    "header",
    [
        "evil.example.com",
        "evil.example.com:11434",
        "localhost.evil.example.com",
        "127.0.0.1.nip.io",
        "corral-srv.team.svc.cluster.local.evil.example.com",
        "2130706433",  # not an address to Python: a name, and unknown
    ],
)
def test_unknown_names_are_refused(header: str) -> None:
    assert not host_allowed(header, SERVICE_NAMES, "0.0.0.0")


@pytest.mark.parametrize("header", [*SERVICE_NAMES, "CORRAL-SRV.team.svc:8080"])
def test_configured_names_are_served(header: str) -> None:
    assert host_allowed(header, SERVICE_NAMES, "0.0.0.0")


def test_the_bound_name_is_served() -> None:
    assert host_allowed("myhost.lan:11434", [], "myhost.lan")
    assert not host_allowed("myhost.lan:11434", [], "0.0.0.0")


def test_wildcards() -> None:
    assert host_allowed("anything.example", ["*"], "127.0.0.1")
    assert host_allowed("example.org", [".example.org"], "127.0.0.1")
    assert host_allowed("a.b.example.org:80", [".example.org"], "127.0.0.1")
    assert not host_allowed("notexample.org", [".example.org"], "127.0.0.1")


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://[::1]:5173",
        "http://0.0.0.0:8080",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc",
    ],
)
def test_local_origins_are_allowed(origin: str) -> None:
    assert origin_allowed(origin, [])


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://localhost.evil.example.com",
        "http://localhost:3000.evil.example.com",
        "http://127.0.0.1.nip.io",
        "null",
    ],
)
def test_foreign_origins_are_refused(origin: str) -> None:
    assert not origin_allowed(origin, [])


def test_configured_origins() -> None:
    allowed = ["https://chat.example.org", "https://*.tools.example.org"]
    assert origin_allowed("https://chat.example.org", allowed)
    assert origin_allowed("https://a.tools.example.org", allowed)
    assert not origin_allowed("https://chat.example.org.evil.com", allowed)
    assert not origin_allowed("http://chat.example.org", allowed)
    assert origin_allowed("https://anything.example", ["*"])


@pytest.mark.parametrize(
    ("header", "api_key", "admin_key", "role"),
    [
        # No keys: everything is open (a local `corral serve`).
        (b"", None, None, Role.ADMIN),
        (b"Bearer whatever", None, None, Role.ADMIN),
        # One key: it grants everything, as before the admin key existed.
        (b"Bearer k", "k", None, Role.ADMIN),
        (b"Bearer wrong", "k", None, None),
        (b"", "k", None, None),
        # Both keys: the api key infers, the admin key manages (and infers).
        (b"Bearer k", "k", "a", Role.INFERENCE),
        (b"Bearer a", "k", "a", Role.ADMIN),
        (b"Bearer wrong", "k", "a", None),
        (b"", "k", "a", None),
        # Only an admin key: inference is open, management needs the key.
        (b"", None, "a", Role.INFERENCE),
        (b"Bearer wrong", None, "a", Role.INFERENCE),
        (b"Bearer a", None, "a", Role.ADMIN),
    ],
)
def test_credential_roles(
    header: bytes, api_key: str | None, admin_key: str | None, role: Role | None
) -> None:
    assert credential_role(header, api_key, admin_key) is role


def test_host_and_origin_lists_come_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_ALLOWED_HOSTS", "corral-srv, corral-srv.team ,")
    monkeypatch.setenv("CORRAL_ALLOWED_ORIGINS", "https://chat.example.org")
    monkeypatch.setenv("CORRAL_MANAGEMENT", "false")
    settings = RuntimeSettings()
    assert settings.allowed_hosts == ["corral-srv", "corral-srv.team"]
    assert settings.allowed_origins == ["https://chat.example.org"]
    assert settings.management is False

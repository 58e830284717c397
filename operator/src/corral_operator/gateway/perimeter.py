"""The gateway's perimeter: which ``Host`` and ``Origin`` a request may carry.

DNS rebinding (a web page whose name is re-pointed at 127.0.0.1) reaches a server on loopback
under a DNS name it does not know. As in Ollama's ``allowedHostsMiddleware``, the check depends
on where the gateway listens: bound to a loopback address (``make up``, a port-forward on a
workstation) only IP addresses, ``localhost`` and its subdomains, the bound name and
``allowed_hosts`` are served; bound to any other address (in a pod, behind Services and
Ingresses, whose names the gateway cannot know) every ``Host`` is served unless
``allowed_hosts`` is set. Unlike Ollama, ``.local`` and ``.internal`` names and the machine's
hostname are not served by default (add them to ``allowed_hosts``). A browser's ``Origin`` is
checked wherever the gateway listens: local origins and ``allowed_origins`` get CORS answers,
every other origin a 403.

The operator's image does not hold the runtime, so this mirrors, on purpose and in small,
``corral_runtime.api.perimeter`` (same name parsing, same wildcards, same default origins).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_operator.gateway.errors import error_response

# Origins a local browser application may use without configuration, as in Ollama.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

_PREFLIGHT_METHODS = b"GET, POST, PUT, DELETE, HEAD, OPTIONS"


def host_name(host_header: str) -> str:
    """The name or address of a ``Host`` value, without port, brackets or final dot."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def bound_to_loopback(bind_host: str) -> bool:
    """Whether the gateway listens on loopback only (``0.0.0.0`` and ``::`` are not)."""
    name = host_name(bind_host)
    address = _ip(name)
    return address.is_loopback if address is not None else _is_localhost(name)


def host_allowed(host_header: str | None, allowed: Sequence[str], bind_host: str) -> bool:
    """Whether a request naming ``host_header`` may be served by a gateway bound to
    ``bind_host`` with ``allowed`` hosts: exact names, ``*`` (any), or ``.example.com`` (that
    name and every name below it)."""
    if not allowed and not bound_to_loopback(bind_host):
        return True
    if not host_header:
        return True  # HTTP/1.0 and other clients that are not browsers
    name = host_name(host_header)
    if _ip(name) is not None or _is_localhost(name) or name == host_name(bind_host):
        return True
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith(".") and (name == pattern[1:] or name.endswith(pattern)):
            return True
    return False


def _wild(text: str, star: str) -> str:
    return star.join(re.escape(part) for part in text.split("*"))


@lru_cache(maxsize=256)
def _origin_pattern(pattern: str) -> re.Pattern[str]:
    """``scheme://host[:port]`` with ``*`` wildcards that stay in their part: a run of name
    characters in the host, of digits in the port (``http://localhost:*`` does not match
    ``http://localhost:1.evil.example``)."""
    pattern = pattern.strip().lower()
    if pattern == "*":
        return re.compile(r".*")
    scheme, _, rest = pattern.partition("://")
    match = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(.*))?", rest)
    host, port = (match.group(1), match.group(2)) if match else (rest, None)
    regex = _wild(scheme, r"[a-z0-9+.-]*") + "://" + _wild(host, r"[^/:\[\]]*")
    if port is not None:
        regex += ":" + _wild(port, r"[0-9]*")
    return re.compile(regex)


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether a browser page from ``origin`` may call the gateway."""
    origin = origin.strip().lower()
    return any(
        _origin_pattern(pattern).fullmatch(origin) for pattern in (*DEFAULT_ORIGINS, *allowed)
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Perimeter:
    """Refuses (403, in the API's shape) a request for an unknown ``Host`` or from a browser
    origin that is not allowed; gives allowed origins CORS answers, preflights included."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        bind_host: str,
        allowed_hosts: Sequence[str],
        allowed_origins: Sequence[str],
    ) -> None:
        self.app = app
        self.bind_host = bind_host
        self.allowed_hosts = tuple(allowed_hosts)
        self.allowed_origins = tuple(allowed_origins)
        # A client sends the same Host on every request: decided once per value (parsing it
        # and the bind address as IP addresses costs more than the rest of this middleware).
        self._host_allowed = lru_cache(maxsize=256)(
            functools.partial(host_allowed, allowed=self.allowed_hosts, bind_host=bind_host)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        host = _header(scope, b"host")
        if not self._host_allowed(host):
            message = (
                f"host {host_name(host or '')!r} is not allowed; "
                "allow it with CORRAL_GATEWAY_ALLOWED_HOSTS"
            )
            await error_response(path, 403, message)(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not origin_allowed(origin, self.allowed_origins):
            message = (
                f"origin {origin!r} is not allowed; allow it with CORRAL_GATEWAY_ALLOWED_ORIGINS"
            )
            await error_response(path, 403, message)(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method"):
            asked = _header(scope, b"access-control-request-headers") or ""
            headers = [
                *cors,
                (b"access-control-allow-methods", _PREFLIGHT_METHODS),
                (b"access-control-allow-headers", asked.encode("latin-1")),
                (b"access-control-max-age", b"86400"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

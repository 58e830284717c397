"""The server's perimeter: which ``Host`` and ``Origin`` a request may carry, and which
credential grants what.

DNS rebinding (a web page whose name is re-pointed at 127.0.0.1 or a pod's address) reaches the
server under a DNS name it does not know, so only known names are served: loopback names, the
bound name, and ``allowed_hosts`` (the operator passes the Service's names). An IP address in
``Host`` is always fine, since rebinding needs a name. Browsers also send ``Origin``: a page from
an origin that is not allowed is refused, as Ollama does with ``OLLAMA_ORIGINS``.

API keys: ``api_key`` grants inference and reading; ``admin_api_key`` (when set) grants model
management as well, and the api key then does not. Without an admin key, whoever may call the
API may manage models (the single-user ``corral serve --api-key`` of before).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_runtime.api.errors import ApiError, error_response

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

_PREFLIGHT_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"


class Role(enum.Enum):
    """What a request's credential allows."""

    INFERENCE = "inference"  # generate, chat, embed, /v1/*, tags, show, ps, version
    ADMIN = "admin"  # all of the above, and create, pull, copy, delete, blobs


def credential_role(
    authorization: bytes, api_key: str | None, admin_api_key: str | None
) -> Role | None:
    """The role an ``Authorization`` header value grants; None: refused (401)."""

    def matches(key: str | None) -> bool:
        return key is not None and hmac.compare_digest(authorization, f"Bearer {key}".encode())

    if matches(admin_api_key):
        return Role.ADMIN
    if api_key is None:
        # No key for inference: anyone may infer; management is open only with no keys at all.
        return Role.ADMIN if admin_api_key is None else Role.INFERENCE
    if matches(api_key):
        return Role.INFERENCE if admin_api_key is not None else Role.ADMIN
    return None


def host_name(host_header: str) -> str:
    """The name or address of a ``Host`` value, without port, brackets or final dot."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host_header: str | None, allowed: Iterable[str], bind_host: str) -> bool:
    """Whether a request naming ``host_header`` may be served.

    Allowed: no Host at all (not a browser), any IP address, ``localhost`` and its subdomains,
    the name the server is bound to, and each of ``allowed``: an exact name, ``*`` (any), or
    ``.example.com`` (that name and every name below it)."""
    if not host_header:
        return True
    name = host_name(host_header)
    if _is_ip(name) or name == "localhost" or name.endswith(".localhost"):
        return True
    if name == host_name(bind_host):
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
    """``scheme://host[:port]`` with ``*`` wildcards that never cross into another part: in
    the host ``*`` is a run of name characters, in the port a run of digits (so that
    ``http://localhost:*`` does not match ``http://localhost:1.evil.example``)."""
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
    """Whether a browser page from ``origin`` may call (see ``_origin_pattern``)."""
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
    """Refuses (403, in the API's shape) requests for an unknown ``Host`` or from a browser
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        host = _header(scope, b"host")
        if not host_allowed(host, self.allowed_hosts, self.bind_host):
            refused = error_response(
                path,
                ApiError(
                    403,
                    f"host {host_name(host or '')!r} is not allowed; "
                    "allow it with CORRAL_ALLOWED_HOSTS",
                ),
            )
            await refused(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not origin_allowed(origin, self.allowed_origins):
            refused = error_response(
                path,
                ApiError(
                    403,
                    f"origin {origin!r} is not allowed; allow it with CORRAL_ALLOWED_ORIGINS",
                ),
            )
            await refused(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        requested = _header(scope, b"access-control-request-method")
        if scope.get("method") == "OPTIONS" and requested is not None:
            asked = _header(scope, b"access-control-request-headers") or ""
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", _PREFLIGHT_METHODS.encode()),
                        (b"access-control-allow-headers", asked.encode("latin-1")),
                        (b"access-control-max-age", b"86400"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

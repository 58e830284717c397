"""Where a pull may fetch from: the policy ``/api/pull`` applies to its sources and every URL.

``corral pull`` on one's own machine may read local files and loopback registries; a server
that pulls on behalf of its clients must not become a way into what only it can reach (a cloud
metadata service, the cluster's internal services, its own file system). So the server's pulls
are checked twice: the source as parsed (local paths, plain HTTP), then every request the puller
sends, redirects and token realms included (the host: any public one by default; a private,
loopback, link-local or otherwise non-global address only when configured).

Host names are resolved for the check; a name whose addresses include a non-global one counts as
that address. (The connection resolves the name again: a DNS server that answers differently
the second time is not caught here; configure ``allowed_hosts`` to pull only from known hosts.)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from corral_runtime.settings import HF_DEFAULT_ENDPOINT
from corral_runtime.store.registry import registry_base
from corral_runtime.store.sources import HuggingFaceSource, LocalSource, OllamaSource, Source
from corral_runtime.store.transfer import PullError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

LOCAL_FILES_REFUSED = "pulling local files is not allowed on this server"


class SourceRefusedError(PullError):
    """A source or URL this server's pull policy does not allow (the request is refused)."""


def resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to (none if it does not resolve: the connection fails)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


def _address(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_public(addr: Address) -> bool:
    """A globally routable unicast address (not loopback, private, link-local — where cloud
    metadata services live —, shared, reserved, multicast or unspecified)."""
    return addr.is_global and not addr.is_multicast


def host_matches(pattern: str, host: str, port: int | None) -> bool:
    """One ``allowed_hosts`` entry: ``*``, a name or address (with or without ``:port``),
    ``.example.com`` (the domain and its subdomains), or a network (``10.0.0.0/8``)."""
    pattern = pattern.strip().lower()
    if pattern == "*":
        return True
    if pattern.startswith("."):
        return host == pattern[1:] or host.endswith(pattern)
    if "/" in pattern:
        addr = _address(host)
        try:
            return addr is not None and addr in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    parts = urlsplit("//" + pattern)
    try:
        wanted_port = parts.port
    except ValueError:
        return False
    name = (parts.hostname or "").lower()
    return name == host and (wanted_port is None or wanted_port == port)


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What a pull may reach. The default allows everything (``corral pull`` on one's own
    machine); ``restricted`` builds a server's policy from its settings."""

    allow_local_paths: bool = True
    allow_insecure: bool = True
    allow_private: bool = True
    allowed_hosts: tuple[str, ...] = ()
    # Where hf:// sources point (SourceSettings.hf_endpoint): their URLs are checked there.
    hf_endpoint: str = HF_DEFAULT_ENDPOINT
    resolver: Resolver = resolve

    @classmethod
    def restricted(
        cls,
        *,
        allowed_hosts: Sequence[str] = (),
        allow_insecure: bool = False,
        allow_local_paths: bool = False,
        resolver: Resolver = resolve,
        hf_endpoint: str = HF_DEFAULT_ENDPOINT,
    ) -> SourcePolicy:
        return cls(
            hf_endpoint=hf_endpoint,
            allow_local_paths=allow_local_paths,
            allow_insecure=allow_insecure,
            allow_private=False,
            allowed_hosts=tuple(h for h in allowed_hosts if h.strip()),
            resolver=resolver,
        )

    def check_source(self, source: Source, *, insecure: bool) -> None:
        """Refuse a source before anything is read or fetched (the same answer whether a local
        path exists or not)."""
        if isinstance(source, LocalSource):
            if not self.allow_local_paths:
                raise SourceRefusedError(LOCAL_FILES_REFUSED)
            return
        if insecure and not self.allow_insecure:
            raise SourceRefusedError("plain-HTTP (insecure) pulls are not allowed on this server")
        if isinstance(source, OllamaSource):
            self.check_url(registry_base(source.name.host, insecure) + "/")
        elif isinstance(source, HuggingFaceSource):
            self.check_url(source.url(self.hf_endpoint))
        else:
            self.check_url(source.url)

    def check_url(self, url: str) -> None:
        """Refuse a URL the puller is about to request (first request, redirect or realm)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "http" and not self.allow_insecure:
            raise SourceRefusedError(
                f"plain-HTTP URLs are not allowed on this server ({parts.hostname})"
            )
        if scheme not in ("https", "http"):
            raise SourceRefusedError(f"unsupported URL scheme {scheme!r}")
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise SourceRefusedError(f"invalid port in a URL for {host}") from exc
        if self.allowed_hosts:
            if any(host_matches(p, host, port) for p in self.allowed_hosts):
                return  # configured: private addresses included
            raise SourceRefusedError(f"pulling from {host} is not allowed on this server")
        if self.allow_private:
            return
        literal = _address(host)
        addresses = [literal] if literal is not None else [_address(a) for a in self.resolver(host)]
        if (
            host in ("localhost", "")
            or host.endswith(".localhost")
            or any(a is not None and not is_public(a) for a in addresses)
        ):
            raise SourceRefusedError(
                f"pulling from {host} is not allowed on this server: it is not a public address "
                "(allow it with allowed hosts for pulls)"
            )

"""API keys: which requests need one, and whether ``Authorization: Bearer <key>`` carries one of
the accepted keys (none configured: open)."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping

from corral_operator.gateway.protocol import is_routed

# The gateway's own answers about models, read with GET: what is served is for key holders only.
_LISTINGS = frozenset({"/api/tags", "/api/ps", "/v1/models"})
_MODEL_PREFIX = "/v1/models/"


def needs_key(method: str, path: str) -> bool:
    """Whether a request must carry an accepted key: the routed endpoints (POST) and the model
    listings (GET). Probes, metrics, the root and version answers, and the 404 of what the
    gateway does not serve stay open, so that kubelets, Prometheus and clients finding their
    way need no key."""
    listing = method == "GET" and (path in _LISTINGS or path.startswith(_MODEL_PREFIX))
    return listing or is_routed(method, path)


def authorized(authorization: str | None, keys: Collection[str], required: bool = True) -> bool:
    """Whether the request may pass. With keys ``required`` (a key Secret is configured) and
    none known yet, nothing passes: an unreadable Secret must not open the gateway."""
    if not required and not keys:
        return True
    scheme, _, supplied = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        return False
    # Compare against every key, always, so timing tells nothing about which one was close.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied.strip().encode(), key.encode())
    return matched


def keys_from_secret(data: Mapping[str, str] | None) -> frozenset[str]:
    """Every value of a Secret (already base64-decoded) is an accepted key; one per line is
    allowed too, so a single entry can hold several."""
    keys: set[str] = set()
    for value in (data or {}).values():
        keys.update(line.strip() for line in value.splitlines() if line.strip())
    return frozenset(keys)

"""API-key check: ``Authorization: Bearer <key>`` against the accepted keys (none: open)."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping


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

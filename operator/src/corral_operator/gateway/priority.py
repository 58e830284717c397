"""Request priorities at the gateway, as pure functions: the class a request is forwarded with,
and the order in which requests held for a server are released.

The runtime orders its wait for a slot by the ``X-Corral-Priority`` header (interactive or
batch, interactive by default; see the runtime's ``engine/priority.py``, whose rules these
mirror: the packages share no code). The gateway decides what that header says: a
ModelServer's ``spec.priority`` maps API keys (by their SHA-256, so no key is written in a
spec) to the highest class their requests may use, and names the class of requests that say
nothing. A request may ask for a lower class than its key's, never a higher one, so a batch
job's key cannot jump the queue by sending ``interactive``.

Requests held while a server has no ready pod are released, once one is, higher class first,
aging by the time held (one class per ``aging_s`` seconds), longest held first among equals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Highest first.
PRIORITY_CLASSES: tuple[str, ...] = ("interactive", "batch")
DEFAULT_PRIORITY = "interactive"
PRIORITY_HEADER = "x-corral-priority"
DEFAULT_AGING_SECONDS = 30.0


class UnknownPriorityError(ValueError):
    def __init__(self, value: str) -> None:
        super().__init__(
            f"unknown priority {value!r} in X-Corral-Priority; "
            f"use one of: {', '.join(PRIORITY_CLASSES)}"
        )


@dataclass(frozen=True, slots=True)
class PriorityConfig:
    """A ModelServer's ``spec.priority``, as the gateway uses it."""

    default: str = DEFAULT_PRIORITY
    aging_s: float = DEFAULT_AGING_SECONDS
    # SHA-256 (hex) of an API key -> the highest class its requests may use.
    keys: Mapping[str, str] = field(default_factory=dict)


def priority_config(spec: Mapping[str, object]) -> PriorityConfig:
    """``spec.priority`` of a ModelServer (the CRD has validated its values)."""
    raw = spec.get("priority")
    priority: Mapping[str, object] = raw if isinstance(raw, Mapping) else {}
    entries = priority.get("apiKeys")
    keys = {
        str(entry["sha256"]).lower(): str(entry["class"])
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, Mapping) and "sha256" in entry and "class" in entry
    }
    aging = priority.get("agingSeconds")
    return PriorityConfig(
        default=str(priority.get("defaultClass") or DEFAULT_PRIORITY),
        aging_s=float(aging) if isinstance(aging, int | float) else DEFAULT_AGING_SECONDS,
        keys=keys,
    )


def key_fingerprint(authorization: str | None) -> str | None:
    """The SHA-256 (hex) of a bearer token, as ``spec.priority.apiKeys`` names keys."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return hashlib.sha256(token.strip().encode()).hexdigest()


def lower_class(a: str, b: str) -> str:
    return max(a, b, key=PRIORITY_CLASSES.index)


def request_priority(header: str | None, authorization: str | None, config: PriorityConfig) -> str:
    """The class a request is forwarded with: the one it asks for (else its key's, else the
    server's default), never above its key's. Raises UnknownPriorityError for a class the
    runtime does not know (refused here, before a request is held for a server)."""
    fingerprint = key_fingerprint(authorization)
    ceiling = config.keys.get(fingerprint) if fingerprint is not None else None
    asked: str | None = None
    if header is not None and header.strip():
        asked = header.strip().lower()
        if asked not in PRIORITY_CLASSES:
            raise UnknownPriorityError(header)
    wanted = asked or ceiling or config.default
    return lower_class(wanted, ceiling) if ceiling is not None else wanted


def with_priority(headers: Sequence[tuple[str, str]], priority: str) -> list[tuple[str, str]]:
    """``headers`` with ``X-Corral-Priority`` set to ``priority`` (whatever the client sent)."""
    kept = [(k, v) for k, v in headers if k.lower() != PRIORITY_HEADER]
    return [*kept, (PRIORITY_HEADER, priority)]


def priority_of(headers: Sequence[tuple[str, str]]) -> str:
    """The class ``with_priority`` set (the default where none is)."""
    return next((v for k, v in headers if k.lower() == PRIORITY_HEADER), DEFAULT_PRIORITY)


def release_order(held: Sequence[tuple[str, float]], aging_s: float) -> list[int]:
    """Indices of held requests, given as (class, seconds held), in the order to release
    them: lowest rank first, the rank being the class's place less one per ``aging_s``
    seconds held; longest held first among equals."""

    def rank(i: int) -> tuple[float, float, int]:
        priority, held_s = held[i]
        aging = held_s / aging_s if aging_s > 0 else 0.0
        return (PRIORITY_CLASSES.index(priority) - aging, -held_s, i)

    return sorted(range(len(held)), key=rank)

"""Parsing and printing the values the cluster commands take and show: durations, sizes, hosts."""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

from corral_operator.durations import parse_go_duration
from corral_operator.status import sizes as status_sizes

DEFAULT_PORT = 11434


def parse_duration(text: str, *, forever: bool = False) -> int:
    """Seconds in ``300``, ``300s``, ``5m``, ``1h30m``, ``500ms`` (Ollama's keep-alive spellings,
    the requests' parser, rounded to whole seconds). A negative value means "no bound" (-1)
    where ``forever`` allows it; a ModelServer's keepAliveSeconds has no forever (its
    ``minReplicas`` says how many replicas stay up)."""
    raw = text.strip().lower()
    seconds = float(raw) if re.fullmatch(r"-?\d+", raw) else parse_go_duration(raw)
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(
            f"invalid duration {text!r}: use seconds (300) or units h, m, s, ms (5m, 1h30m)"
        )
    if seconds < 0:
        if forever:
            return -1
        raise ValueError(
            f"invalid duration {text!r}: it cannot be negative (replicas that stay up: --min)"
        )
    return round(seconds)


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m12s``, ``2h5m``, ``3d4h`` (two units at most)."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = parts[:2]
    if len(shown) == 2 and shown[1][0] == 0:
        shown = shown[:1]
    return "".join(f"{value}{unit}" for value, unit in shown)


def format_size(size: int | None) -> str:
    """Bytes in decimal units, as ``ollama list`` prints them (``253 MB``, ``4.9 GB``), the way a
    Model's status says them; ``-`` when unknown."""
    return "-" if size is None else status_sizes.format_size(size)


def normalize_host(raw: str) -> str:
    """A base URL from ``--host``/``CORRAL_HOST``/``OLLAMA_HOST``, accepting Ollama's forms:
    ``host``, ``host:port``, ``http[s]://host[:port][/prefix]``; the port defaults to 11434
    (443 for https) and a trailing slash is dropped."""
    text = raw.strip()
    if not text:
        raise ValueError("empty host")
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid host {raw!r}: expected [http[s]://]host[:port]")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in host {raw!r}") from exc
    if port is None:
        port = 443 if parts.scheme == "https" else DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a request's ``options`` (``num_predict=64``, ``temperature=0.2``,
    ``stop=["\\n"]``): the value is JSON where it parses as JSON, else the plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"invalid option {text!r}: expected KEY=VALUE, e.g. num_predict=64")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value

"""Parsing and printing the values the cluster commands take and show: durations, sizes, hosts."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 11434
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> int:
    """Seconds in ``300``, ``300s``, ``5m``, ``1h30m`` (Ollama's keep-alive spellings, rounded
    to whole seconds). Negative values ("never unload") have no meaning for a ModelServer,
    whose ``minReplicas`` says how many replicas stay up."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+", raw):
        return int(raw)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not raw or pos != len(raw):
        raise ValueError(
            f"invalid duration {text!r}: use seconds (300) or units h, m, s (5m, 1h30m)"
        )
    return round(total)


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
    """Bytes in decimal units, as ``ollama list`` prints them (``253 MB``, ``4.9 GB``)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


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

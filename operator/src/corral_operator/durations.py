"""Ollama's keep-alive durations, as every part of the operator reads them: a request's
``keep_alive`` (seconds, or a Go duration such as ``"5m"``; negative means forever) and the
durations the cluster CLI takes. Pure functions, no I/O."""

from __future__ import annotations

import math
import re
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds (``inf`` for negative = forever); None when absent or
    unparsable (the runtime reports malformed values; the gateway only reads a hint)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parsed = parse_go_duration(text)
            if parsed is None:
                return None
            seconds = parsed
    else:
        return None
    if math.isnan(seconds):  # "nan", or a bare NaN (which Python's JSON parser accepts)
        return None
    return math.inf if seconds < 0 else seconds


def parse_go_duration(text: str) -> float | None:
    """A Go duration (``time.ParseDuration``: ``"5m"``, ``"1h30m"``, ``"-1s"``, ``"300ms"``) in
    seconds; None when it is none."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body:
        return None
    total, pos = 0.0, 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total

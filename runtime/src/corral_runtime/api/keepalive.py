"""A request's ``keep_alive``: absent means the server's default; otherwise a number of seconds or
a Go duration, as ``corral_runtime.durations`` parses them."""

from __future__ import annotations

from corral_runtime.durations import bounded_keep_alive, keep_alive_seconds


def parse_keep_alive(value: float | str | None, default: float) -> float:
    """Seconds to stay loaded (``FOREVER`` for negative values); ``None`` means the default."""
    if value is None:
        return bounded_keep_alive(default)
    return keep_alive_seconds(value)

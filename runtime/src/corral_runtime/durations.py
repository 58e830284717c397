"""Keep-alive durations, parsed as Ollama does: a ground-floor fact the settings (the server's
default, ``CORRAL_KEEP_ALIVE``) and the APIs (a request's ``keep_alive``) share.

A number is seconds, a string is a Go duration (``"10m"``, ``"1h30m"``, ``"-1s"``; a bare
number other than ``"0"`` lacks its unit and is refused, as Go's ``time.ParseDuration`` does), a
negative value keeps the model loaded forever, and 0 unloads it after the request. Anything
longer than ``MAX_KEEP_ALIVE_SECONDS`` (a century, ``1e308``, ``"999999999h"``, infinity) is
forever too, so no expiry time ever overflows a timestamp; NaN and text that is no duration are
refused.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf
DEFAULT_KEEP_ALIVE_SECONDS = 300.0  # Ollama's five minutes
# Longer than this is forever: a century, so that an expiry time stays a valid timestamp.
MAX_KEEP_ALIVE_SECONDS = 100 * 365.25 * 86400

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class InvalidKeepAliveError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """A Go duration string in seconds (``time.ParseDuration`` rules)."""
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise InvalidKeepAliveError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        if match is None:
            raise InvalidKeepAliveError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def keep_alive_seconds(value: float | str) -> float:
    """Seconds to stay loaded for a number or a duration string (``FOREVER`` for negative)."""
    if isinstance(value, bool):
        raise InvalidKeepAliveError("keep_alive must be a number or a duration string")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # An integer past any float: past the bound either way.
            return FOREVER
    else:
        seconds = parse_duration(value)
    return bounded_keep_alive(seconds)


def parse_default_keep_alive(value: object) -> float:
    """The server's default keep_alive (``--keep-alive``, ``CORRAL_KEEP_ALIVE``): what a request
    takes, or a bare number of seconds (``"300"``, ``"-1"``) as flags and environment variables
    write it; negative is ``FOREVER``. Raises ``InvalidKeepAliveError`` with a one-line message."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            value = text
    try:
        if not isinstance(value, int | float | str):
            raise InvalidKeepAliveError(str(value))
        return keep_alive_seconds(value)
    except InvalidKeepAliveError:
        raise InvalidKeepAliveError(
            f"invalid keep-alive {str(value)!r}: use seconds (300), a duration (5m, 1h30m) "
            "or a negative value to keep models loaded forever"
        ) from None


def bounded_keep_alive(seconds: float) -> float:
    """Seconds as the manager takes them: negative, infinite or beyond
    ``MAX_KEEP_ALIVE_SECONDS`` is ``FOREVER``; NaN is refused."""
    if math.isnan(seconds):
        raise InvalidKeepAliveError("keep_alive must be a number or a duration string")
    return FOREVER if seconds < 0 or seconds > MAX_KEEP_ALIVE_SECONDS else seconds

"""keep_alive as Ollama reads it."""

from __future__ import annotations

import math

import pytest

from corral_runtime.api.info import FOREVER_RFC3339, rfc3339
from corral_runtime.api.keepalive import parse_keep_alive
from corral_runtime.durations import FOREVER, InvalidKeepAliveError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 300.0),
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("0", 0.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("45s", 45.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_keep_alive(value, 300.0) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, -0.5, "-1m", "-5s"])
def test_negative_is_forever(value: object) -> None:
    assert parse_keep_alive(value, 300.0) == FOREVER  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "soon", "10", "5x", "m", "1h-", True, float("nan")])
def test_invalid(value: object) -> None:
    with pytest.raises(InvalidKeepAliveError):
        parse_keep_alive(value, 300.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        1e308,
        float("inf"),
        float("-inf"),
        -1e308,
        10**30,
        10**400,
        -(10**400),
        "999999999h",
        "-999999999h",
        "1" * 500 + "h",
        4e9,
    ],
)
def test_beyond_a_century_is_forever(value: object) -> None:
    assert parse_keep_alive(value, 300.0) == FOREVER  # type: ignore[arg-type]


def test_a_long_but_bounded_keep_alive_stays_a_duration() -> None:
    assert parse_keep_alive("87600h", 300.0) == 87600 * 3600.0  # ten years


@pytest.mark.parametrize("timestamp", [math.inf, -math.inf, math.nan, 1e308, -1e308, 1e15])
def test_any_expiry_formats_as_rfc3339(timestamp: float) -> None:
    assert rfc3339(timestamp) == FOREVER_RFC3339

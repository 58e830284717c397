"""keep_alive as Ollama reads it."""

from __future__ import annotations

import pytest

from corral_runtime.api.keepalive import FOREVER, InvalidKeepAliveError, parse_keep_alive

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

"""Ollama's keep_alive as the operator reads it: seconds or Go durations, negative means forever,
anything else is no hint."""

from __future__ import annotations

import math

import pytest

from corral_operator.durations import keep_alive_seconds

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (True, None),
        (30, 30.0),
        (0, 0.0),
        ("0", 0.0),
        ("90", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        (-1, math.inf),
        ("-1m", math.inf),
        ("soon", None),
        ([1], None),
        # Not a duration: a hint the gateway ignores (the runtime answers it with a 400).
        ("nan", None),
        (math.nan, None),
        ("inf", math.inf),
        (1e308, 1e308),
    ],
)
def test_keep_alive_seconds(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds

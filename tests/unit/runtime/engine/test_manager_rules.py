"""The model manager's rules as pure functions: the context a model loads with, and which
keep_alive values never expire."""

from __future__ import annotations

import math

import pytest

from corral_runtime.durations import MAX_KEEP_ALIVE_SECONDS
from corral_runtime.engine.manager import never_expires, trained_context

pytestmark = pytest.mark.unit


def test_the_context_is_at_most_what_the_model_was_trained_for() -> None:
    assert trained_context(4096, 32768) == 4096
    assert trained_context(1 << 20, 32768) == 32768
    assert trained_context(8192, None) == 8192
    assert trained_context(8192, 0) == 8192


@pytest.mark.parametrize(
    ("keep_alive", "forever"),
    [
        (300.0, False),
        (0.0, False),
        (MAX_KEEP_ALIVE_SECONDS, False),
        (MAX_KEEP_ALIVE_SECONDS * 2, True),
        (-1.0, True),
        (math.inf, True),
        (math.nan, True),
        (1e308, True),
    ],
)
def test_what_never_expires(keep_alive: float, forever: bool) -> None:
    assert never_expires(keep_alive) is forever

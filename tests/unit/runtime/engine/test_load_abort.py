"""A load's switch to stop (``llama.LoadAbort``): what llama.cpp's progress callback reads at
every step of a load (tests/runtime/test_cold_start.py runs it through real loads)."""

from __future__ import annotations

import pytest

from corral_runtime.engine.llama import LoadAbort

pytestmark = pytest.mark.unit


def test_a_switch_keeps_its_first_reason() -> None:
    switch = LoadAbort()
    switch.abort("the server is shutting down")
    switch.abort("something else")
    assert switch.reason == "the server is shutting down"

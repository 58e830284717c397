"""A load's switch to stop (``llama.LoadAbort``): what llama.cpp's progress callback reads at
every step of a load (tests/runtime/test_cold_start.py runs it through real loads)."""

from __future__ import annotations

import pytest

from corral_runtime.engine.llama import LoadAbort
from corral_runtime.engine.manager import load_stop_reason

pytestmark = pytest.mark.unit


def test_a_switch_keeps_its_first_reason() -> None:
    switch = LoadAbort()
    switch.abort("the server is shutting down")
    switch.abort("something else")
    assert switch.reason == "the server is shutting down"


def test_a_load_stops_when_every_load_is_abandoned_or_its_own_switch_is_set() -> None:
    # What a load's blob verification asks between its steps, before llama.cpp's load.
    switch = LoadAbort()
    assert load_stop_reason(None, switch) is None
    assert load_stop_reason("the server is shutting down", switch) == "the server is shutting down"
    switch.abort("the request that asked for it was cancelled")
    assert load_stop_reason(None, switch) == "the request that asked for it was cancelled"
    assert load_stop_reason("the server is shutting down", switch) == "the server is shutting down"

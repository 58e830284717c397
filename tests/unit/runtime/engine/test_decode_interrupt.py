"""The switch that stops a lower class's decode in flight (``llama.DecodeInterrupt``): the flag
llama.cpp's abort callback (libc's ``strlen``) reads, and where a stopped decode's sequences
are cut back to (tests/runtime/test_priorities.py stops a real decode)."""

from __future__ import annotations

import ctypes

import pytest

from corral_runtime.engine.llama import DecodeInterrupt, Row, first_positions

pytestmark = pytest.mark.unit


def stops(switch: DecodeInterrupt) -> bool:
    """What llama.cpp's callback answers: the flag's length as C reads it, non-zero = stop."""
    return int(ctypes.CDLL(None).strlen(switch.flag)) != 0


def test_a_decode_stops_only_while_armed_and_requested() -> None:
    switch = DecodeInterrupt()
    assert not stops(switch)
    switch.request()  # arrived before the decode: heeded once one is armed
    assert not stops(switch)
    switch.arm(True)
    assert stops(switch)
    switch.arm(False)  # that decode is over: nothing else stops
    assert not stops(switch)
    switch.arm(True)
    switch.request(False)  # the inbox was read: the request was seen
    assert not stops(switch)
    switch.request()
    assert stops(switch)


def test_a_stopped_decode_cuts_each_sequence_back_to_its_first_row() -> None:
    rows = [Row(7, 12, 0, True), Row(8, 40, 2, True), Row(9, 41, 2, False), Row(5, 3, 1, True)]
    assert first_positions(rows) == {0: 12, 2: 40, 1: 3}
    assert first_positions([]) == {}

"""Stop strings across token boundaries."""

from __future__ import annotations

import pytest

from corral_runtime.engine.stops import StopMatcher

pytestmark = pytest.mark.unit


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_no_stops_passes_everything() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_a_piece() -> None:
    assert run(["END"], ["abcENDdef"]) == ("abc", True)


def test_stop_split_across_pieces_is_never_emitted_in_part() -> None:
    matcher = StopMatcher(["<end_of_turn>"])
    assert matcher.feed("Hello <end") == "Hello "
    assert matcher.feed("_of_") == ""
    assert matcher.feed("turn> more") == ""
    assert matcher.stopped


def test_a_false_start_is_released() -> None:
    assert run(["<end>"], ["a <e", "nd", "ing"]) == ("a <ending", False)


def test_the_earliest_of_several_stops_wins() -> None:
    assert run(["B", "A"], ["xxAyyB"]) == ("xx", True)


def test_nothing_after_a_stop() -> None:
    matcher = StopMatcher(["."])
    assert matcher.feed("one. two") == "one"
    assert matcher.feed("three") == ""
    assert matcher.flush() == ""

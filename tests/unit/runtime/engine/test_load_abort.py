"""A load's switch to stop (``llama.LoadAbort``): what llama.cpp's progress callback reads at
every step of a load, and how a switch reaches the load of its model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.engine.llama import LoadAbort, abort_reason, abortable_load, switches_of

pytestmark = pytest.mark.unit

MODEL = Path("/models/blobs/sha256-" + "a" * 64)
OTHER = Path("/models/blobs/sha256-" + "b" * 64)


def test_a_load_goes_on_until_a_switch_is_set() -> None:
    first, second = LoadAbort(), LoadAbort()
    assert abort_reason(()) is None
    assert abort_reason((first, second)) is None
    second.abort("the server is shutting down")
    assert abort_reason((first, second)) == "the server is shutting down"


def test_a_switch_keeps_its_first_reason() -> None:
    switch = LoadAbort()
    switch.abort("the server is shutting down")
    switch.abort("something else")
    assert switch.reason == "the server is shutting down"


def test_a_switch_reaches_the_loads_of_its_file_while_it_is_open() -> None:
    switch, other = LoadAbort(), LoadAbort()
    with abortable_load(MODEL, switch):
        assert switches_of(MODEL) == (switch,)
        assert switches_of(OTHER) == ()
        with abortable_load(MODEL, other):
            assert switches_of(MODEL) == (switch, other)
        assert switches_of(MODEL) == (switch,)
    assert switches_of(MODEL) == ()


def test_a_load_that_fails_takes_its_switch_away() -> None:
    with pytest.raises(RuntimeError), abortable_load(MODEL, LoadAbort()):
        raise RuntimeError("llama.cpp could not load the model file")
    assert switches_of(MODEL) == ()

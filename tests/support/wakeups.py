"""Counting an event loop's wake-ups from other threads (its ``call_soon_threadsafe`` calls),
each of which hands the GIL from the caller's thread to the loop's and back."""

from __future__ import annotations

import asyncio

import pytest


class Wakeups:
    def __init__(self) -> None:
        self.count = 0


def count_wakeups(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> Wakeups:
    """From now until the test ends, count ``loop.call_soon_threadsafe`` calls."""
    counted = Wakeups()
    original = loop.call_soon_threadsafe

    def counting(*args: object) -> asyncio.Handle:
        counted.count += 1
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return counted

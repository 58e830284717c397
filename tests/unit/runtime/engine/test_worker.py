"""The decode thread's hand-over of stream items to the event loop (``StreamOutbox``): one
call per loop per flush, each stream's items in order, and a closed loop's streams cancelled."""

from __future__ import annotations

import asyncio
import threading

import pytest

from corral_runtime.engine.worker import GenerationStream, StreamOutbox
from tests.support.wakeups import count_wakeups

pytestmark = pytest.mark.unit


async def test_a_flush_wakes_the_loop_once_and_keeps_each_streams_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakeups = count_wakeups(loop, monkeypatch)
    outbox = StreamOutbox()
    streams = [GenerationStream(loop, outbox) for _ in range(3)]

    def decode_thread() -> None:  # four steps' pieces for every stream
        for step in range(4):
            for index, stream in enumerate(streams):
                stream._put(f"{index}:{step} ")
        outbox.flush()

    thread = threading.Thread(target=decode_thread)
    thread.start()
    thread.join()
    assert wakeups.count == 1
    await asyncio.sleep(0)
    for index, stream in enumerate(streams):
        items = [stream._queue.get_nowait() for _ in range(4)]
        assert items == [f"{index}:{step} " for step in range(4)]
        assert stream._queue.empty()
    outbox.flush()  # nothing left: no further wake-up
    assert wakeups.count == 1


def test_the_streams_of_a_closed_loop_are_cancelled() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    outbox = StreamOutbox()
    closed = GenerationStream(loop, outbox)
    closed._put("piece")
    outbox.flush()
    assert closed.cancelled

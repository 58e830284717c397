"""Starting a file's writeback early, so that the fsync that makes it durable is short.

A blob lands over a few seconds and must be fsynced before it is renamed into place; handing
the landed bytes to the disk as they arrive leaves that fsync only the last step to wait for.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from the C library (Python's os module lacks it), or None."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_AVAILABLE = _SYNC_FILE_RANGE is not None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of ``fd`` to disk, without waiting for it.

    Only a head start for the final fsync, which still makes the blob durable: where the call is
    missing or fails, nothing is lost but the head start.
    """
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class Writeback:
    """Starts the disk writes of landed ranges on a thread of its own.

    sync_file_range blocks while the device's queue is full; the hashing loop must not wait.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="corral-writeback")
        self._thread.start()

    def submit(self, offset: int, length: int) -> None:
        self._queue.put((offset, length))

    def close(self) -> None:
        """Wait for the submitted ranges to be started (the fd must stay open until then)."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            start_writeback(self._fd, *item)

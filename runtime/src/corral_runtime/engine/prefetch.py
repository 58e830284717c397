"""A model file read into the page cache beside llama.cpp's own load of it.

llama.cpp maps a model file with MAP_POPULATE (the CPU's default load), but only after it has
parsed the GGUF's metadata and tensor table and built the vocabulary in C: for
``bench/load.py``'s 2.5 GB, 219-layer model about 0.3 to 0.6 s of CPU work before it reads a tensor.
``FilePrefetch`` populates a read-only mapping of its own of the same file
(``MADV_POPULATE_READ``, Linux 5.14 and later) in a thread, from the load's start, so the read
runs during that parse instead of after it: the pages land in the page cache, which llama.cpp's
mapping then shares, and its populate finds them there or already under way. The load's output
is unchanged (the same file, mapped the same way); only when its bytes are read moves.

On the project machine (2 cores shared with other work, the page cache dropped before each),
llama.cpp's load of that model alone took 0.45 to 0.50 s with the prefetch and 0.98 to 1.59 s
without (interleaved); the weights' read in a server-like process 0.63 to 1.50 s against 1.42 to
2.51 s (interleaved, 8 loads each, a loaded machine); ``bench/load.py``'s load, without and with
it back to back on a loaded machine (load average 4 to 5), 2.12 -> 1.66 s (medians of 5 rounds,
ratio 0.43 -> 0.51) and 2.40 -> 2.13 s (medians of 7, ratio 0.36 -> 0.58); with it on a quiet
machine, ``load_rate_vs_sequential_read_ratio=1.20`` (7 rounds; the code before, 0.73 in another
quiet window).

A madvise call holds no lock of Python's (ctypes releases the GIL), so the thread costs the
event loop nothing; it reads in chunks, asking between them whether to go on, so a load that
ends or is abandoned stops it within one chunk. Where the kernel lacks ``MADV_POPULATE_READ``,
or the file cannot be mapped, it reads nothing and llama.cpp reads the file as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MADV_POPULATE_READ = 22  # linux/mman.h, since 5.14
PROT_READ = 0x1
MAP_SHARED = 0x1
MAP_FAILED = ctypes.c_void_p(-1).value
# A chunk is one madvise call: how much is read after the load asks it to stop (~20-60 ms).
CHUNK_BYTES = 64 << 20


def chunks(size: int, chunk: int) -> list[tuple[int, int]]:
    """The file's bytes as (offset, length) pieces of at most ``chunk`` (a multiple of the page
    size, as a mapping's offset must be), in order."""
    return [(offset, min(chunk, size - offset)) for offset in range(0, size, chunk)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


class FilePrefetch:
    """Reads ``path`` into the page cache in a thread of its own (see the module docstring)
    while ``keep_going()`` holds and ``stop`` has not been called."""

    def __init__(
        self, path: Path, keep_going: Callable[[], bool] = lambda: True, chunk: int = CHUNK_BYTES
    ) -> None:
        self.path = path
        self._keep_going = keep_going
        self._chunk = chunk
        self._stopped = False  # a plain attribute: read between chunks, set from any thread
        self.bytes_read = 0  # what the mapping populated (for tests and logs)
        self._thread = threading.Thread(target=self._run, name=f"prefetch {path.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Read no further chunk; the thread ends after the one under way (not waited for)."""
        self._stopped = True

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _going(self) -> bool:
        return not self._stopped and self._keep_going()

    def _run(self) -> None:
        try:
            self._populate()
        except Exception:  # a prefetch only saves time: llama.cpp reads the file itself
            log.debug("prefetching %s failed", self.path, exc_info=True)

    def _populate(self) -> None:
        libc = _libc()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for offset, length in chunks(os.fstat(fd).st_size, self._chunk):
                if not self._going() or not _populate_chunk(libc, fd, offset, length):
                    return
                self.bytes_read += length
        finally:
            os.close(fd)


def _populate_chunk(libc: ctypes.CDLL, fd: int, offset: int, length: int) -> bool:
    """Read one chunk into the page cache through a mapping of its own, unmapped at once (so
    the mapping's page tables are torn down chunk by chunk as the read goes, not all at its
    end beside the context's creation); False where that failed (logged)."""
    address = libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, offset)
    if address is None or address == MAP_FAILED:
        log.debug("prefetch: mmap failed (errno %d)", ctypes.get_errno())
        return False
    try:
        if libc.madvise(address, length, MADV_POPULATE_READ) != 0:
            # EINVAL: a kernel before 5.14; llama.cpp reads the rest as before.
            log.debug("prefetch: madvise failed (errno %d)", ctypes.get_errno())
            return False
        return True
    finally:
        libc.munmap(address, length)

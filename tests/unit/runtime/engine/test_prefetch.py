"""``engine.prefetch``: a model file read into the page cache in a thread beside llama.cpp's
load (bench/load.py measures what it saves; the runtime tests load through it). Here on real
files, their residency read back with ``mincore``."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from corral_runtime.engine.prefetch import FilePrefetch, chunks

pytestmark = pytest.mark.unit

PAGE = mmap.PAGESIZE
CHUNK = 256 * PAGE


def resident_pages(path: Path) -> int:
    """How many of ``path``'s pages the page cache holds (``mincore`` on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        pages = (size + PAGE - 1) // PAGE
        vector = ctypes.create_string_buffer(pages)
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        return sum(byte & 1 for byte in vector.raw)


@pytest.fixture
def cold_file(tmp_path: Path) -> Path:
    """Five and a half chunks of random bytes, none of its pages in the page cache."""
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(5 * CHUNK + CHUNK // 2))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident_pages(path) != 0:
        pytest.skip("this filesystem keeps the file's pages cached (tmpfs)")
    return path


def test_chunks_cover_the_file_in_order_the_last_one_short() -> None:
    assert chunks(0, CHUNK) == []
    assert chunks(CHUNK, CHUNK) == [(0, CHUNK)]
    assert chunks(2 * CHUNK + 5, CHUNK) == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, 5)]


def test_a_prefetch_reads_the_whole_file_into_the_page_cache(cold_file: Path) -> None:
    prefetch = FilePrefetch(cold_file, chunk=CHUNK)
    prefetch.start()
    prefetch.join(timeout=30)
    size = cold_file.stat().st_size
    assert prefetch.bytes_read == size
    assert resident_pages(cold_file) == (size + PAGE - 1) // PAGE


def test_a_prefetch_stops_between_chunks_once_told(cold_file: Path) -> None:
    # The load's switch (or its end) turns keep_going off after two chunks were read.
    asked = []

    def keep_going() -> bool:
        asked.append(True)
        return len(asked) <= 2

    prefetch = FilePrefetch(cold_file, keep_going, chunk=CHUNK)
    prefetch.start()
    prefetch.join(timeout=30)
    assert prefetch.bytes_read == 2 * CHUNK
    # (What is resident then depends on the kernel's readahead beyond the two chunks.)


def test_a_stopped_prefetch_reads_nothing(cold_file: Path) -> None:
    prefetch = FilePrefetch(cold_file, chunk=CHUNK)
    prefetch.stop()
    prefetch.start()
    prefetch.join(timeout=30)
    assert prefetch.bytes_read == 0
    assert resident_pages(cold_file) == 0


def test_a_file_that_cannot_be_read_ends_the_prefetch_quietly(tmp_path: Path) -> None:
    # llama.cpp reports a missing or unreadable file; the prefetch only gives up.
    prefetch = FilePrefetch(tmp_path / "missing.gguf", chunk=CHUNK)
    prefetch.start()
    prefetch.join(timeout=30)
    assert prefetch.bytes_read == 0

"""How a blob lands in the store, whoever writes it: one writer per digest, a partial file, a
verified rename.

A download (``download.py``), an upload (``upload.py``), an imported local file and bytes in
memory (``ModelStore.land``) of ``sha256:<hex>`` all write ``blobs/sha256-<hex>-partial`` while
holding an exclusive ``flock`` on ``…-partial.lock``, hash the bytes, fsync, and only then rename
the partial over the blob's path (``ModelStore.publish_blob``). So concurrent writers of one
digest (threads, processes sharing the volume, a pull beside an upload) produce one blob, and no
reader ever sees a blob that was not verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from corral_runtime.store.digests import blob_filename
from corral_runtime.store.safefs import clear_foreign, open_path


def partial_path(blobs: Path, key: str) -> Path:
    """Where the blob named ``key`` (a digest's file name, or a download's URL key) lands, in
    the store's ``blobs/``."""
    return blobs / (key + "-partial")


def blob_partial(blobs: Path, digest: str) -> Path:
    """The partial file of a blob whose digest is known."""
    return partial_path(blobs, blob_filename(digest))


def lock_path(partial: Path) -> Path:
    """The lock that makes one writer of ``partial`` at a time."""
    return partial.with_name(partial.name + ".lock")


def sidecar_path(partial: Path) -> Path:
    """A download's record of how much of ``partial`` is on disk (``download.py``)."""
    return partial.with_name(partial.name + ".json")


def start_over(partial: Path) -> None:
    """Clear the way for a writer that starts ``partial`` from nothing (under its lock): the
    partial and a download's record of it go (a link there is removed, never followed)."""
    for path in (sidecar_path(partial), partial):
        clear_foreign(path)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(
    path: Path, on_wait: Callable[[], None] | None = None, poll: float = 0.2
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed), removing it on release.

    Because the holder removes the file, a waiter that finally gets the lock checks that the path
    still names the file it locked, and starts over if not; so two holders never coexist.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        clear_foreign(path)  # a link at the lock's path is not followed: it is replaced
        fd = open_path(path, os.O_RDWR | os.O_CREAT)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                    time.sleep(poll)
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        except BaseException:
            os.close(fd)
            raise
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
        return

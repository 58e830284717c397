"""Blobs uploaded to the store (``POST /api/blobs/<digest>``): verified before they exist.

The body lands the way a download does (``landing``): under the digest's lock, into its partial
file, hashed as it arrives, fsynced, and renamed into place only when it hashes to the digest it
was uploaded under. A body that hashes to anything else, ends early, or grows past the largest
blob the store accepts leaves nothing behind. An upload cannot be resumed (the protocol has no
way to), so it starts its partial file over, and one that fails removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterable

from corral_runtime.store.digests import parse_digest
from corral_runtime.store.landing import blob_partial, exclusive_lock, lock_path, start_over
from corral_runtime.store.layout import BlobState, ModelStore
from corral_runtime.store.limits import MAX_BLOB_BYTES
from corral_runtime.store.safefs import open_path, write_all


class UploadError(ValueError):
    """An uploaded body the store refuses; nothing of it was kept."""


class UploadDigestMismatchError(UploadError):
    """The uploaded bytes do not hash to the digest they were uploaded under."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch, expected {expected}, got {actual}")


class UploadTooLargeError(UploadError):
    """The body grew past the largest blob the store accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a blob may have at most {limit} bytes")
        self.limit = limit


def check_upload_size(written: int, limit: int) -> None:
    """Refuse a body once it has more bytes than any blob may have."""
    if written > limit:
        raise UploadTooLargeError(limit)


class BlobUpload:
    """One upload of blob ``digest``, written piece by piece (blocking calls, in this order):
    ``begin``, ``write`` for each piece, ``finish``; ``close`` always (it releases the lock and
    removes what did not become the blob).

    The calls may come from different threads, and ``close`` may come while ``begin`` still waits
    for another writer (the request was cancelled): they take turns, and nothing begins after
    ``close``.
    """

    def __init__(self, store: ModelStore, digest: str, limit: int = MAX_BLOB_BYTES) -> None:
        self.store = store
        self.digest = parse_digest(digest)
        self.limit = limit
        self._partial = blob_partial(store.blobs, self.digest)
        self._held = contextlib.ExitStack()
        self._hasher = hashlib.sha256()
        self._fd: int | None = None
        self._written = 0
        self._turn = threading.Lock()
        self._closed = False

    def begin(self) -> bool:
        """Take the digest's lock and start the partial file; False (nothing to write) when the
        store already holds the blob verified, before or after waiting for another writer."""
        with self._turn:
            return not self._closed and self._begin()

    def _begin(self) -> bool:
        if self.store.check_blob(self.digest) is BlobState.VALID:
            return False
        self.store.ensure_blobs_dir()  # a real directory: LinkInStoreError for a link
        self._held.enter_context(exclusive_lock(lock_path(self._partial)))
        if self.store.check_blob(self.digest) is BlobState.VALID:
            return False
        start_over(self._partial)  # (a download's partial and its record of it included)
        self._fd = open_path(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.fchmod(self._fd, 0o644)
        return True

    def write(self, piece: bytes) -> None:
        with self._turn:
            assert self._fd is not None, "begin() first"
            self._written += len(piece)
            check_upload_size(self._written, self.limit)
            self._hasher.update(piece)
            write_all(self._fd, piece)

    def finish(self) -> None:
        """Publish the body as the blob if it hashes to the digest (UploadDigestMismatchError)."""
        with self._turn:
            assert self._fd is not None, "begin() first"
            actual = "sha256:" + self._hasher.hexdigest()
            if actual != self.digest:
                raise UploadDigestMismatchError(self.digest, actual)
            os.fsync(self._fd)
            self.store.publish_blob(self._partial, self.digest, self._written)

    def close(self) -> None:
        with self._turn:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._partial.unlink(missing_ok=True)  # (gone already once published)
            self._held.close()


async def put_blob(
    store: ModelStore,
    digest: str,
    body: AsyncIterable[bytes],
    limit: int = MAX_BLOB_BYTES,
) -> bool:
    """Store ``body`` as blob ``digest``: True when it was written now, False when the store
    already held it (the body is then not read). UploadError when the body is refused; whatever
    ``body`` raises (a client gone) propagates, and nothing of it is kept either way."""
    upload = BlobUpload(store, digest, limit)
    try:
        if not await asyncio.to_thread(upload.begin):
            return False
        async for piece in body:
            await asyncio.to_thread(upload.write, piece)
        await asyncio.to_thread(upload.finish)
        return True
    finally:
        await asyncio.to_thread(upload.close)

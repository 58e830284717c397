"""Uploaded blobs: written under the digest's lock, verified, and nothing kept of a refused body."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from corral_runtime.store.digests import InvalidDigestError, blob_filename
from corral_runtime.store.landing import blob_partial, exclusive_lock, lock_path
from corral_runtime.store.layout import BlobState, ModelStore
from corral_runtime.store.upload import (
    BlobUpload,
    UploadDigestMismatchError,
    UploadTooLargeError,
    check_upload_size,
    put_blob,
)

pytestmark = pytest.mark.unit

DATA = b"a blob of some bytes" * 1000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def pieces(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def put(store: ModelStore, data: bytes, digest: str = DIGEST, limit: int | None = None) -> bool:
    body = pieces(split(data))
    if limit is None:
        return asyncio.run(put_blob(store, digest, body))
    return asyncio.run(put_blob(store, digest, body, limit))


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_a_body_that_hashes_to_its_digest_becomes_a_verified_blob(store: ModelStore) -> None:
    assert put(store, DATA) is True
    assert store.blob_path(DIGEST).read_bytes() == DATA
    assert store.check_blob(DIGEST, len(DATA)) is BlobState.VALID
    assert leftovers(store) == [blob_filename(DIGEST)]
    assert put(store, b"not read") is False  # held already: the body is not even read


def test_a_wrong_digest_keeps_nothing(store: ModelStore) -> None:
    with pytest.raises(UploadDigestMismatchError, match="digest mismatch, expected"):
        put(store, DATA + b"x")
    assert not store.has_blob(DIGEST) and leftovers(store) == []


def test_a_truncated_body_keeps_nothing(store: ModelStore) -> None:
    with pytest.raises(UploadDigestMismatchError):
        put(store, DATA[: len(DATA) // 2])
    assert leftovers(store) == []


def test_a_body_that_breaks_off_keeps_nothing(store: ModelStore) -> None:
    async def gone() -> AsyncIterator[bytes]:
        yield DATA[:100]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(put_blob(store, DIGEST, gone()))
    assert leftovers(store) == []


def test_a_body_past_the_limit_is_refused_as_it_arrives(store: ModelStore) -> None:
    with pytest.raises(UploadTooLargeError):
        put(store, DATA, limit=len(DATA) - 1)
    assert leftovers(store) == []
    assert put(store, DATA, limit=len(DATA)) is True


def test_check_upload_size() -> None:
    check_upload_size(10, 10)
    with pytest.raises(UploadTooLargeError, match="at most 9 bytes"):
        check_upload_size(10, 9)


def test_concurrent_puts_of_one_digest_make_one_blob(store: ModelStore) -> None:
    async def both() -> list[bool]:
        return list(
            await asyncio.gather(
                put_blob(store, DIGEST, pieces(split(DATA, 100))),
                put_blob(store, DIGEST, pieces(split(DATA, 100))),
            )
        )

    results = asyncio.run(both())
    assert True in results
    assert store.check_blob(DIGEST, len(DATA)) is BlobState.VALID
    assert leftovers(store) == [blob_filename(DIGEST)]


def test_an_upload_waits_for_the_digests_other_writer(store: ModelStore) -> None:
    store.ensure_blobs_dir()
    held = threading.Event()
    release = threading.Event()

    def writer() -> None:  # another process's pull holding the digest's lock
        partial = blob_partial(store.blobs, DIGEST)
        with exclusive_lock(lock_path(partial)):
            held.set()
            release.wait(5)
            partial.write_bytes(DATA)
            store.publish_blob(partial, DIGEST, len(DATA))

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(5)
    upload = BlobUpload(store, DIGEST)
    began: list[bool] = []
    waited = threading.Thread(target=lambda: began.append(upload.begin()))
    waited.start()
    waited.join(0.3)
    assert waited.is_alive()  # still waiting for the lock
    release.set()
    thread.join(5)
    waited.join(5)
    upload.close()
    assert began == [False]  # it found the other writer's blob in place
    assert leftovers(store) == [blob_filename(DIGEST)]


def test_nothing_begins_after_close(store: ModelStore) -> None:
    # (A cancelled request closes its upload while begin may not have run yet.)
    upload = BlobUpload(store, DIGEST)
    upload.close()
    assert upload.begin() is False
    assert not store.blobs.exists() or leftovers(store) == []


def test_a_link_at_the_partial_is_replaced_not_written_through(
    store: ModelStore, tmp_path: Path
) -> None:
    store.ensure_blobs_dir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    blob_partial(store.blobs, DIGEST).symlink_to(outside)
    assert put(store, DATA) is True
    assert outside.read_bytes() == b"keep me"
    assert store.blob_path(DIGEST).read_bytes() == DATA


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "sha256-" + "z" * 64, "../" + DIGEST, "md5:00"]
)
def test_a_digest_that_could_escape_the_store_is_refused(store: ModelStore, digest: str) -> None:
    with pytest.raises(InvalidDigestError):
        put(store, DATA, digest=digest)
    assert not store.blobs.exists() or leftovers(store) == []

"""A blob's hash asks its stop between blocks (a model load abandoned while its blob is verified
for the first time): what the stop raises ends the hash there, and nothing is recorded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from corral_runtime.store import digests
from corral_runtime.store.digests import blob_filename, sha256_bytes, sha256_stream
from corral_runtime.store.layout import BlobState, ModelStore

pytestmark = pytest.mark.unit

BLOCK = 16
DATA = bytes(range(256)) * 4  # 64 blocks


class Stopped(Exception):
    pass


def stop_after(asks: int) -> tuple[list[int], digests.StopCheck]:
    """A stop that raises ``Stopped`` at its ask number ``asks``; the list counts its asks."""
    count = [0]

    def stop() -> None:
        count[0] += 1
        if count[0] >= asks:
            raise Stopped

    return count, stop


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "CHUNK", BLOCK)


def test_a_stop_ends_the_hash_before_the_next_block() -> None:
    f = io.BytesIO(DATA)
    count, stop = stop_after(3)
    with pytest.raises(Stopped):
        sha256_stream(f, stop)
    assert count[0] == 3
    assert f.tell() == 2 * BLOCK  # the third block was never read


def test_a_stop_that_never_raises_leaves_the_digest_as_it_is() -> None:
    count, stop = stop_after(len(DATA))
    assert sha256_stream(io.BytesIO(DATA), stop) == sha256_bytes(DATA)
    assert count[0] == len(DATA) // BLOCK + 1  # before each block and before the end


def test_a_stopped_check_records_nothing_and_the_next_one_hashes_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_blobs_dir()
    digest = sha256_bytes(DATA)
    store.blob_path(digest).write_bytes(DATA)
    record = tmp_path / ".corral" / "verified" / blob_filename(digest)

    _, stop = stop_after(5)
    with pytest.raises(Stopped):
        store.check_blob(digest, len(DATA), stop)
    assert not record.exists()

    restarted = ModelStore(tmp_path)  # not even remembered in memory: a new store hashes again
    count, stop = stop_after(len(DATA))
    assert restarted.check_blob(digest, len(DATA), stop) is BlobState.VALID
    assert count[0] == len(DATA) // BLOCK + 1
    assert record.exists()
    _, refuse = stop_after(1)
    assert restarted.check_blob(digest, len(DATA), refuse) is BlobState.VALID  # not hashed again

"""Every writer of a blob lands it one way: under the digest's lock, through its partial file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corral_runtime.store.digests import blob_filename, sha256_bytes
from corral_runtime.store.landing import blob_partial, sidecar_path, start_over
from corral_runtime.store.layout import BlobState, Layer, ModelStore

pytestmark = pytest.mark.unit

DATA = b"GGUF and then some" * 4096
DIGEST = sha256_bytes(DATA)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(DATA)
    return path


def names(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir())


@pytest.mark.parametrize("link", [True, False])
def test_an_import_lands_one_verified_blob_and_nothing_else(
    store: ModelStore, source: Path, link: bool
) -> None:
    assert store.import_file(source, link=link) == Layer("", DIGEST, len(DATA))
    assert store.check_blob(DIGEST, len(DATA)) is BlobState.VALID
    assert names(store) == [blob_filename(DIGEST)]


@pytest.mark.parametrize("link", [True, False])
def test_an_import_through_a_symbolic_link_lands_the_file_it_names(
    store: ModelStore, source: Path, tmp_path: Path, link: bool
) -> None:
    # `corral pull ./model.gguf` where model.gguf links to a download elsewhere.
    pointer = tmp_path / "pointer.gguf"
    pointer.symlink_to(source)
    assert store.import_file(pointer, link=link) == Layer("", DIGEST, len(DATA))
    assert store.check_blob(DIGEST, len(DATA)) is BlobState.VALID
    blob = store.blobs / blob_filename(DIGEST)
    assert not blob.is_symlink() and blob.read_bytes() == DATA


def test_concurrent_imports_of_one_file_make_one_blob(store: ModelStore, source: Path) -> None:
    layers: list[Layer] = []
    threads = [
        threading.Thread(target=lambda: layers.append(store.import_file(source, link=False)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert layers == [Layer("", DIGEST, len(DATA))] * 4
    assert names(store) == [blob_filename(DIGEST)]


def test_an_import_replaces_a_link_at_the_partial(
    store: ModelStore, source: Path, tmp_path: Path
) -> None:
    store.ensure_blobs_dir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    blob_partial(store.blobs, DIGEST).symlink_to(outside)
    store.import_file(source, link=False)
    assert outside.read_bytes() == b"keep me"
    assert store.blob_path(DIGEST).read_bytes() == DATA


def test_start_over_removes_the_partial_and_a_downloads_record(store: ModelStore) -> None:
    store.ensure_blobs_dir()
    partial = blob_partial(store.blobs, DIGEST)
    partial.write_bytes(b"half")
    sidecar_path(partial).write_text("{}")
    start_over(partial)
    assert names(store) == []

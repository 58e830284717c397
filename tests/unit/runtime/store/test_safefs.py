"""The store's file access below its root: no link followed, blobs verified and recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral_runtime.store.digests import sha256_bytes
from corral_runtime.store.layout import BlobState, ModelStore
from corral_runtime.store.safefs import (
    LinkInStoreError,
    clear_foreign,
    open_file,
    opened_dir,
    write_atomic,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "file").write_text("outside")
    return folder


def test_a_linked_directory_is_refused_and_nothing_is_made_through_it(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to(outside)
    with (
        pytest.raises(LinkInStoreError, match="'a' is not a directory"),
        opened_dir(root, ("a", "b"), create=True),
    ):
        pass
    assert sorted(p.name for p in outside.iterdir()) == ["file"]


def test_a_linked_file_is_refused_for_reading_and_replaced_for_writing(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "x").symlink_to(outside / "file")
    with opened_dir(root, ()) as fd:
        with pytest.raises(LinkInStoreError):
            open_file(fd, "x")
        write_atomic(fd, "x", b"inside")
    assert (root / "x").read_bytes() == b"inside" and not (root / "x").is_symlink()
    assert (outside / "file").read_text() == "outside"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with opened_dir(tmp_path, ()) as fd, pytest.raises(LinkInStoreError):
        open_file(fd, "fifo")


def test_clear_foreign_removes_a_link_never_its_target(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "lock"
    link.symlink_to(outside / "file")
    clear_foreign(link)
    assert not link.exists() and not link.is_symlink()
    assert (outside / "file").read_text() == "outside"
    regular = tmp_path / "mine"
    regular.write_text("kept")
    clear_foreign(regular)
    assert regular.read_text() == "kept"


def test_blob_states_and_the_verification_record(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    digest = store.put_bytes(b"payload").digest
    assert store.check_blob(digest, 7) is BlobState.VALID
    assert store.check_blob(digest, 8) is BlobState.INVALID
    assert store.check_blob(sha256_bytes(b"absent")) is BlobState.MISSING
    record = store.root / ".corral" / "verified" / digest.replace(":", "-")
    assert record.is_file()
    store.blob_path(digest).write_bytes(b"PAYLOAD")  # same size, other bytes
    assert ModelStore(store.root).check_blob(digest, 7) is BlobState.INVALID
    store.discard_blob(digest)
    assert not store.blob_path(digest).exists() and not record.exists()


def test_an_imported_hard_link_is_the_source_file_and_recorded_verified(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path / "models")
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(1000))
    layer = store.import_file(source)
    assert store.check_blob(layer.digest, layer.size) is BlobState.VALID
    assert store.blob_path(layer.digest).stat().st_ino == source.stat().st_ino


def test_names_skip_linked_manifests_and_directories(tmp_path: Path, outside: Path) -> None:
    store = ModelStore(tmp_path / "models")
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF-m")
    store.create_model("real:1", source)
    real = store.manifest_path(store.get("real:1").name)
    (real.parent / "linked").symlink_to(real)
    (store.manifests / "registry.ollama.ai" / "elsewhere").symlink_to(outside)
    assert [n.display for n in store.names()] == ["real:1"]
    with pytest.raises(LookupError):
        store.get("real:linked")

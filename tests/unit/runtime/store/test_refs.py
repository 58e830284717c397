"""Reference counting and garbage collection: what is kept, what goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral_runtime.store.layout import ModelNotFoundError, ModelStore
from corral_runtime.store.refs import (
    PullPin,
    collect_garbage,
    copy_model,
    delete_model,
    manifest_digests,
    pinned_digests,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    for name, payload in (("a:1", b"GGUF-a"), ("b:1", b"GGUF-b")):
        f = tmp_path / f"{name[0]}.gguf"
        f.write_bytes(payload)
        s.create_model(name, f, template="shared template")
    return s


def test_gc_removes_only_unreferenced_blobs(store: ModelStore) -> None:
    orphan = store.put_bytes(b"orphan").digest
    keep = manifest_digests(store.get("a:1").manifest)
    report = collect_garbage(store)
    assert report.removed == [orphan] and report.freed_bytes == len(b"orphan")
    assert all(store.has_blob(d) for d in keep)


def test_gc_keeps_pinned_and_in_use_blobs(store: ModelStore) -> None:
    pinned = store.put_bytes(b"being pulled").digest
    loaded = store.put_bytes(b"loaded elsewhere").digest
    with PullPin(store) as pin:
        pin.add([pinned])
        assert pinned in pinned_digests(store)
        assert collect_garbage(store, in_use=[loaded]).removed == []
    assert collect_garbage(store).removed == sorted([pinned, loaded])


def test_pin_of_a_dead_process_is_stale(store: ModelStore) -> None:
    digest = store.put_bytes(b"abandoned").digest
    pins = store.root / ".corral" / "pulls"
    pins.mkdir(parents=True)
    (pins / "dead.json").write_text(json.dumps([digest]))  # nobody holds its lock
    assert pinned_digests(store) == set()
    assert not (pins / "dead.json").exists()
    assert collect_garbage(store).removed == [digest]


def test_gc_ignores_partials_locks_and_foreign_files(store: ModelStore) -> None:
    extra = [
        "sha256-" + "0" * 64 + "-partial",
        "sha256-" + "0" * 64 + "-partial.json",
        ".tmp-x",
        "README",
    ]
    for name in extra:
        (store.blobs / name).write_bytes(b"x")
    collect_garbage(store)
    assert all((store.blobs / name).exists() for name in extra)


def test_delete_keeps_shared_blobs_and_removes_the_rest(store: ModelStore) -> None:
    a = store.get("a:1")
    b = store.get("b:1")
    shared = manifest_digests(a.manifest) & manifest_digests(b.manifest)
    assert shared  # the template layer
    report = delete_model(store, "a:1")
    assert set(report.removed) == manifest_digests(a.manifest) - shared
    assert all(store.has_blob(d) for d in manifest_digests(b.manifest))
    with pytest.raises(ModelNotFoundError):
        store.get("a:1")
    assert not (store.manifests / "registry.ollama.ai" / "library" / "a").exists()


def test_delete_never_removes_a_loaded_models_blobs(store: ModelStore) -> None:
    a = store.get("a:1")
    report = delete_model(store, "a:1", in_use=[a.model_digest])
    assert a.model_digest not in report.removed
    assert store.has_blob(a.model_digest)


def test_copy_shares_blobs_and_survives_deleting_the_original(store: ModelStore) -> None:
    copy_model(store, "a:1", "team/a-copy:v2")
    delete_model(store, "a:1")
    assert store.get("team/a-copy:v2").model_path.read_bytes() == b"GGUF-a"


def test_unknown_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        delete_model(store, "nope:1")
    with pytest.raises(ModelNotFoundError):
        copy_model(store, "nope:1", "x:1")

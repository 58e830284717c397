"""The store never follows a link it did not make: for blobs, partials, sidecars, locks, manifests.

Each test plants a symbolic link inside a real store pointing at a file (or directory) outside it,
then drives the real API (an in-process server, the official ollama client, raw httpx) or the
puller against the loopback registry, and checks that the outside file was neither read (its
content is in no answer) nor written or created, and that answers carry no filesystem path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import httpx
import ollama
import pytest

from corral_runtime.store.digests import blob_filename
from corral_runtime.store.layout import MODEL_LAYER, TEMPLATE_LAYER, ModelStore
from corral_runtime.store.pull import Puller, PullOptions
from corral_runtime.store.refs import collect_garbage
from corral_runtime.store.safefs import LinkInStoreError
from tests.runtime.conftest import TINY_MODEL, RunningServer, pull_tiny
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.runtime

MODEL = TINY_MODEL
MODEL_DIGEST = "sha256:" + hashlib.sha256(MODEL).hexdigest()
SECRET = "corral-secret-outside-the-store-4f1e"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the store holding a secret file."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text(SECRET)
    return folder


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime: what must not change."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def no_path_in(text: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in text


def test_a_linked_text_layer_is_not_read_through_show(
    store: ModelStore, tiny_registry: TestRegistry, store_server: RunningServer, outside: Path
) -> None:
    pull_tiny(store, tiny_registry)
    stored = store.get(f"{tiny_registry.host}/library/tiny")
    template = stored.manifest.layer(TEMPLATE_LAYER)
    assert template is not None
    path = store.blob_path(template.digest)
    path.unlink()
    path.symlink_to(outside / "secret.txt")
    before = snapshot(outside)

    r = httpx.post(
        f"{store_server.base_url}/api/show", json={"model": f"{tiny_registry.host}/library/tiny"}
    )
    assert r.status_code == 500 and SECRET not in r.text
    no_path_in(r.text, store.root, outside)
    tags = httpx.get(f"{store_server.base_url}/api/tags").text
    assert SECRET not in tags
    assert snapshot(outside) == before


def test_a_linked_model_blob_is_not_loaded_listed_or_shown(
    store: ModelStore,
    tiny_registry: TestRegistry,
    store_server: RunningServer,
    store_client: ollama.Client,
    outside: Path,
) -> None:
    pull_tiny(store, tiny_registry)
    (outside / "model.gguf").write_bytes(MODEL)
    path = store.blob_path(MODEL_DIGEST)
    path.unlink()
    path.symlink_to(outside / "model.gguf")
    name = f"{tiny_registry.host}/library/tiny"

    with pytest.raises(ollama.ResponseError) as caught:
        store_client.generate(model=name, prompt="hello", options={"num_predict": 1})
    assert caught.value.status_code == 500
    no_path_in(str(caught.value), store.root, outside)
    with pytest.raises(ollama.ResponseError):
        store_client.show(name)
    assert name not in [m.model for m in store_client.list().models]
    # The blob endpoint does not take the link for a blob: it is absent, and an upload
    # replaces the link with the real bytes (the outside file is untouched).
    assert httpx.head(f"{store_server.base_url}/api/blobs/{MODEL_DIGEST}").status_code == 404
    before = snapshot(outside)
    posted = httpx.post(f"{store_server.base_url}/api/blobs/{MODEL_DIGEST}", content=MODEL)
    assert posted.status_code == 201
    assert not path.is_symlink() and path.read_bytes() == MODEL
    assert snapshot(outside) == before
    reply = store_client.generate(model=name, prompt="hello", options={"num_predict": 2})
    assert reply.done


def test_a_linked_partial_is_replaced_not_written_through(
    store: ModelStore, tiny_registry: TestRegistry, outside: Path
) -> None:
    store.blobs.mkdir(parents=True)
    partial = store.blobs / (blob_filename(MODEL_DIGEST) + "-partial")
    partial.symlink_to(outside / "secret.txt")
    sidecar = partial.with_name(partial.name + ".json")
    sidecar.symlink_to(outside / "secret.txt")
    (store.blobs / (partial.name + ".json.tmp")).symlink_to(outside / "sidecar-tmp")
    before = snapshot(outside)

    pull_tiny(store, tiny_registry)
    assert store.blob_path(MODEL_DIGEST).read_bytes() == MODEL
    assert snapshot(outside) == before
    assert not (outside / "sidecar-tmp").exists()


def test_a_link_at_the_lock_path_creates_nothing_outside(
    store: ModelStore, tiny_registry: TestRegistry, outside: Path
) -> None:
    store.blobs.mkdir(parents=True)
    lock = store.blobs / (blob_filename(MODEL_DIGEST) + "-partial.lock")
    lock.symlink_to(outside / "created-by-lock")
    (store.root / ".corral").mkdir()
    (store.root / ".corral" / "gc.lock").symlink_to(outside / "created-by-gc")
    pull_tiny(store, tiny_registry)
    collect_garbage(store)
    assert store.blob_path(MODEL_DIGEST).read_bytes() == MODEL
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_linked_manifests_and_manifest_directories_are_not_followed(
    store: ModelStore, tiny_registry: TestRegistry, store_client: ollama.Client, outside: Path
) -> None:
    pull_tiny(store, tiny_registry)
    real = store.manifest_path(store.get(f"{tiny_registry.host}/library/tiny").name)
    # A manifest that is a link, and a namespace directory that is a link to a tree outside.
    evil_tree = outside / "tree" / "tiny"
    evil_tree.mkdir(parents=True)
    (evil_tree / "latest").write_bytes(real.read_bytes())
    library = store.manifests / "registry.ollama.ai" / "library"
    library.mkdir(parents=True)
    (library / "evil").mkdir()
    (library / "evil" / "latest").symlink_to(real)
    (store.manifests / "registry.ollama.ai" / "linked").symlink_to(outside / "tree")
    before = snapshot(outside)

    listed = [m.model for m in store_client.list().models]
    assert not any("evil" in name or "linked" in name for name in listed)
    for name in ("evil", "linked/tiny"):
        with pytest.raises(ollama.ResponseError) as caught:
            store_client.show(name)
        assert caught.value.status_code in (404, 500)
        no_path_in(str(caught.value), store.root, outside)
    # Writing a name under the linked directory goes nowhere outside.
    with pytest.raises(ollama.ResponseError):
        store_client.copy(f"{tiny_registry.host}/library/tiny", "linked/copied")
    with pytest.raises(ollama.ResponseError):
        store_client.delete("linked/tiny")
    assert snapshot(outside) == before


def test_a_linked_blobs_directory_is_refused(
    store: ModelStore, tiny_registry: TestRegistry, store_server: RunningServer, outside: Path
) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "blobs").symlink_to(outside)
    before = snapshot(outside)
    r = httpx.post(f"{store_server.base_url}/api/blobs/{MODEL_DIGEST}", content=MODEL)
    assert r.status_code >= 400
    no_path_in(r.text, store.root, outside)
    assert snapshot(outside) == before
    with pytest.raises(LinkInStoreError):
        store.put_bytes(b"x")
    with pytest.raises(LinkInStoreError):
        pull_tiny(store, tiny_registry)
    tiny_registry.add_file("/files/tiny.gguf", MODEL)
    with pytest.raises(LinkInStoreError):  # a plain URL: no digest known before it lands
        Puller(store, PullOptions(insecure=True)).pull(f"{tiny_registry.base_url}/files/tiny.gguf")
    assert snapshot(outside) == before


def test_the_store_itself_makes_no_links_and_cleans_none_of_its_own(
    store: ModelStore, tiny_registry: TestRegistry
) -> None:
    pull_tiny(store, tiny_registry)
    for dirpath, dirnames, filenames in os.walk(store.root):
        for entry in (*dirnames, *filenames):
            assert not Path(dirpath, entry).is_symlink()
    assert store.get(f"{tiny_registry.host}/library/tiny").manifest.layer(MODEL_LAYER) is not None


def test_a_linked_state_directory_is_refused_and_nothing_outside_is_removed(
    store: ModelStore, tiny_registry: TestRegistry, outside: Path
) -> None:
    pull_tiny(store, tiny_registry)
    (outside / "stale-looking-pin.json").write_text("[]")
    state = store.root / ".corral"
    shutil.rmtree(state)
    state.mkdir()
    (state / "pulls").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(LinkInStoreError):
        collect_garbage(store)
    with pytest.raises(LinkInStoreError):
        pull_tiny(store, tiny_registry)
    assert snapshot(outside) == before

"""Blobs at their final path are verified before use, once per file, and a pull repairs them.

A real store filled by the puller from the loopback registry, the runtime serving it (the tiny
llama model, loaded by llama.cpp), and the official ollama client.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import httpx
import ollama
import pytest

from corral_runtime.store import layout
from corral_runtime.store.digests import blob_filename
from corral_runtime.store.gguf import GGUFDetails, check_model_file
from corral_runtime.store.layout import CHECKED, BlobState, ModelStore
from tests.runtime.conftest import TINY_MODEL, RunningServer, pull_tiny
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.runtime

MODEL = TINY_MODEL
DIGEST = "sha256:" + hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def store(tmp_path: Path, tiny_registry: TestRegistry) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    pull_tiny(s, tiny_registry)
    return s


def name(tiny_registry: TestRegistry) -> str:
    return f"{tiny_registry.host}/library/tiny"


def blob_requests(tiny_registry: TestRegistry) -> int:
    digest = DIGEST.removeprefix("sha256:")
    return sum(1 for r in tiny_registry.requests() if digest in r.path and r.method == "GET")


def record_path(store: ModelStore) -> Path:
    return store.root / ".corral" / "verified" / blob_filename(DIGEST)


def flip_one_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def generate(client: ollama.Client, tiny_registry: TestRegistry) -> ollama.GenerateResponse:
    return client.generate(model=name(tiny_registry), prompt="hello", options={"num_predict": 2})


def test_a_flipped_byte_is_not_served_and_a_pull_repairs_it(
    store: ModelStore,
    tiny_registry: TestRegistry,
    store_server: RunningServer,
    store_client: ollama.Client,
) -> None:
    path = store.blob_path(DIGEST)
    flip_one_byte(path, len(MODEL) - 10)  # in the tensor data: the GGUF header still parses
    assert path.stat().st_size == len(MODEL)

    with pytest.raises(ollama.ResponseError) as caught:
        generate(store_client, tiny_registry)
    assert caught.value.status_code == 500
    assert str(store.root) not in str(caught.value)
    assert httpx.head(f"{store_server.base_url}/api/blobs/{DIGEST}").status_code == 404

    tiny_registry.reset()
    pull_tiny(store, tiny_registry)  # reported success before, without fixing anything
    assert blob_requests(tiny_registry) >= 1
    assert path.read_bytes() == MODEL
    assert generate(store_client, tiny_registry).done


def test_a_truncated_blob_is_fetched_again(store: ModelStore, tiny_registry: TestRegistry) -> None:
    path = store.blob_path(DIGEST)
    os.truncate(path, len(MODEL) // 2)
    assert store.check_blob(DIGEST, len(MODEL)) is BlobState.INVALID
    tiny_registry.reset()
    # Before, every pull failed here ("has N bytes, the manifest says M").
    pull_tiny(store, tiny_registry)
    assert blob_requests(tiny_registry) >= 1
    assert path.read_bytes() == MODEL
    assert store.check_blob(DIGEST, len(MODEL)) is BlobState.VALID


def test_an_upload_replaces_a_corrupt_blob(store: ModelStore, store_server: RunningServer) -> None:
    path = store.blob_path(DIGEST)
    flip_one_byte(path, 100)
    url = f"{store_server.base_url}/api/blobs/{DIGEST}"
    assert httpx.head(url).status_code == 404
    assert httpx.post(url, content=MODEL).status_code == 201
    assert path.read_bytes() == MODEL
    assert httpx.head(url).status_code == 200


def test_a_blob_is_hashed_once_and_the_record_survives_a_restart(
    store: ModelStore, tiny_registry: TestRegistry, store_client: ollama.Client
) -> None:
    # The pull hashed the blob as it landed and recorded it: no load hashes it again.
    record = record_path(store)
    assert record.is_file()
    written = record.stat().st_ino  # a new hash would rewrite the record (a new file)
    assert generate(store_client, tiny_registry).done

    restarted = ModelStore(store.root)  # another process: nothing in memory
    stored = restarted.get(name(tiny_registry))
    restarted.check_model(stored)
    assert record.stat().st_ino == written

    # Touching the blob (its mtime and ctime change) makes the next check hash it again.
    os.utime(store.blob_path(DIGEST))
    ModelStore(store.root).check_model(stored)
    assert record.stat().st_ino != written


def test_a_pull_does_not_hash_a_verified_blob_again(
    store: ModelStore, tiny_registry: TestRegistry
) -> None:
    record = record_path(store)
    written = record.stat().st_ino
    tiny_registry.reset()
    pull_tiny(store, tiny_registry)
    assert blob_requests(tiny_registry) == 0
    assert record.stat().st_ino == written


def test_a_blobs_gguf_checks_run_once_per_blob_and_their_details_survive_a_restart(
    store: ModelStore, tiny_registry: TestRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checks walk the whole vocabulary in Python (100-150 ms of a cold start's path for a
    # 150k-token model): a blob verified against its digest passed them once, and its details
    # are recorded beside its other facts.
    stored = store.get(name(tiny_registry))
    details = store.check_model(stored)
    record = store.root / ".corral" / CHECKED / blob_filename(DIGEST)
    assert record.is_file()

    def checks_again(f: object, size: int) -> None:
        raise AssertionError("the blob's GGUF checks ran again")

    monkeypatch.setattr(layout, "check_model_file", checks_again)
    assert ModelStore(store.root).check_model(stored) == details  # another process

    # A blob that changed (its mtime and ctime here) is checked again, as is one whose record
    # cannot be read.
    monkeypatch.undo()
    calls: list[int] = []

    def counted(f: BinaryIO, size: int) -> GGUFDetails:
        calls.append(size)
        return check_model_file(f, size)

    monkeypatch.setattr(layout, "check_model_file", counted)
    os.utime(store.blob_path(DIGEST))
    assert ModelStore(store.root).check_model(stored) == details
    record.write_text("{not json")
    assert ModelStore(store.root).check_model(stored) == details
    assert calls == [len(MODEL), len(MODEL)]
    assert ModelStore(store.root).check_model(stored) == details
    assert len(calls) == 2

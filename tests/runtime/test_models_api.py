"""The model-management router (/api/pull, delete, copy, create, blobs) over the real store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from corral_runtime.api import models as models_api
from corral_runtime.api.errors import install_error_handlers
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.layout import ModelStore
from tests.support.gguf_corpus import encode, tiny_model
from tests.support.registry import TestRegistry, running_registry

pytestmark = pytest.mark.runtime

GGUF = encode(tiny_model())  # a real (tiny) model: create and pull validate what they store


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry"), auth=True) as reg:
        reg.add_model("library", "tiny", "latest", GGUF, template="{{ .Prompt }}")
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def client(store: ModelStore) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(models_api.router)
    # No keys, management on (a local `corral serve`), pulls from the loopback test registry.
    app.state.settings = RuntimeSettings(
        pull_allowed_hosts=["127.0.0.1", "localhost"], pull_allow_insecure=True
    )
    app.state.store = store
    with TestClient(app) as c:
        yield c


def test_pull_streams_ollama_status_lines(
    client: TestClient, registry: TestRegistry, store: ModelStore
) -> None:
    name = f"{registry.host}/library/tiny"
    with client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    digest = "sha256:" + hashlib.sha256(GGUF).hexdigest()
    progress = [x for x in lines if x.get("digest") == digest]
    assert progress[-1]["completed"] == progress[-1]["total"] == len(GGUF)
    assert store.get(name).model_path.read_bytes() == GGUF


def test_pull_errors(client: TestClient, registry: TestRegistry) -> None:
    r = client.post("/api/pull", json={"model": "s3://x/y.gguf"})
    assert r.status_code == 400 and "unsupported source" in r.json()["error"]
    r = client.post(
        "/api/pull",
        json={"model": f"{registry.host}/library/nope", "insecure": True, "stream": False},
    )
    assert r.status_code == 404 and "file does not exist" in r.json()["error"]
    lines = [
        json.loads(x)
        for x in client.post(
            "/api/pull", json={"model": f"{registry.host}/library/tiny"}
        ).text.splitlines()
    ]
    assert lines[-1]["error"].endswith("use --insecure")


def test_blobs_create_copy_delete(client: TestClient, store: ModelStore) -> None:
    digest = "sha256:" + hashlib.sha256(GGUF).hexdigest()
    assert client.head(f"/api/blobs/{digest}").status_code == 404
    wrong = client.post(f"/api/blobs/{digest}", content=GGUF + b"x")
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
    assert not store.has_blob(digest)
    assert [p.name for p in store.blobs.iterdir()] == []
    assert client.post(f"/api/blobs/{digest}", content=GGUF).status_code == 201
    assert client.head(f"/api/blobs/{digest}").status_code == 200
    assert client.head("/api/blobs/sha256:../../etc/passwd").status_code in (400, 404)
    assert client.head("/api/blobs/sha256-" + "z" * 64).status_code == 400

    r = client.post(
        "/api/create",
        json={
            "model": "mine:1",
            "files": {"m.gguf": digest},
            "template": "T",
            "system": "S",
            "parameters": {"temperature": 0.5, "stop": ["<x>"]},
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
        },
    )
    assert r.status_code == 200 and r.json() == {"status": "success"}
    made = store.get("mine:1")
    assert (made.template, made.system, made.params["temperature"]) == ("T", "S", 0.5)
    assert made.messages == [{"role": "user", "content": "hi"}]

    r = client.post("/api/create", json={"model": "derived:1", "from": "mine:1", "system": "S2"})
    assert r.status_code == 200 and json.loads(r.text.splitlines()[-1]) == {"status": "success"}
    derived = store.get("derived:1")
    assert (derived.template, derived.system, derived.model_digest) == ("T", "S2", digest)
    assert (
        client.post(
            "/api/create", json={"model": "x:1", "from": "nope:1", "stream": False}
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/create",
            json={"model": "x:1", "files": {"m.gguf": "sha256:" + "0" * 64}, "stream": False},
        ).status_code
        == 400
    )

    assert (
        client.post("/api/copy", json={"source": "mine:1", "destination": "copy:1"}).status_code
        == 200
    )
    assert (
        client.post("/api/copy", json={"source": "nope:1", "destination": "c:1"}).status_code == 404
    )
    assert (
        client.post("/api/copy", json={"source": "mine:1", "destination": "../x"}).status_code
        == 400
    )
    for name in ("mine:1", "derived:1"):
        assert client.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
    assert store.has_blob(digest)  # copy:1 still uses it
    r = client.request("DELETE", "/api/delete", json={"model": "mine:1"})
    assert r.status_code == 404 and r.json()["error"] == "model 'mine:1' not found"
    assert client.request("DELETE", "/api/delete", json={"model": "copy:1"}).status_code == 200
    assert not store.has_blob(digest)

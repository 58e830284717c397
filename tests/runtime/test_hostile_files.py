"""Malformed model files are refused before llama.cpp sees them, and never take the server down.

Every variant of ``tests/support/gguf_corpus.py`` goes through blob upload + ``/api/create`` and,
written straight into the store (as another writer of a shared volume could), through a load on
first use. The server is ``corral serve`` in a process of its own: before this check a
``block_count`` of 0 aborted the process, which would have taken pytest with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral_runtime.engine.probe import probe_model, probe_model_file
from corral_runtime.store.gguf import GGML_TYPES, InvalidModelFileError
from corral_runtime.store.layout import LOADS, ModelStore
from corral_runtime.store.pull import Puller, PullOptions
from tests.runtime.conftest import serve, settings_for
from tests.support.gguf_corpus import Variant, encode, malformed_variants, tiny_model
from tests.support.registry import running_registry
from tests.support.serveproc import ServedProcess, serving_process

pytestmark = pytest.mark.runtime

VARIANTS = malformed_variants()


def seeded_name(variant: Variant) -> str:
    return "seeded-" + variant.name.replace("_", "-")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store holding the tiny model and every malformed variant as a model of its own."""
    root = tmp_path_factory.mktemp("hostile")
    store = ModelStore(root / "models")
    files = root / "files"
    files.mkdir()
    tiny = files / "tiny.gguf"
    tiny.write_bytes(encode(tiny_model()))
    store.create_model("tiny", tiny, template="{{ .Prompt }}")
    for variant in VARIANTS:
        store.create_model(seeded_name(variant), variant.write(files))
    return store


@pytest.fixture(scope="module")
def server(store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serving_process(
        store.root, "--threads", "2", "--context-length", "256", log=log
    ) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: ServedProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url, timeout=60) as c:
        yield c


def refused(caught: pytest.ExceptionInfo[ollama.ResponseError], variant: Variant) -> None:
    error = caught.value
    assert error.status_code == 400, (variant.name, error.status_code, error.error)
    assert "not a valid model file: " in error.error
    assert variant.reason in error.error
    assert "/tmp" not in error.error and "/models" not in error.error


def test_the_valid_tiny_model_is_created_and_served(
    server: ServedProcess, client: ollama.Client
) -> None:
    data = encode(tiny_model())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = httpx.post(f"{server.base_url}/api/blobs/{digest}", content=data)
    assert upload.status_code in (200, 201)  # (200: the store already holds it, as "tiny")
    client.create(model="created-tiny", files={"tiny.gguf": digest}, template="{{ .Prompt }}")
    assert client.generate(model="created-tiny", prompt="hello", options={"num_predict": 3}).done
    assert client.generate(model="tiny", prompt="hello", options={"num_predict": 3}).done


def test_every_malformed_file_is_refused_at_create(
    server: ServedProcess, client: ollama.Client
) -> None:
    for variant in VARIANTS:
        digest = "sha256:" + hashlib.sha256(variant.data).hexdigest()
        upload = httpx.post(f"{server.base_url}/api/blobs/{digest}", content=variant.data)
        assert upload.status_code in (200, 201), variant.name
        with pytest.raises(ollama.ResponseError) as caught:
            client.create(model="created-" + seeded_name(variant), files={"m.gguf": digest})
        refused(caught, variant)
        assert server.alive(), f"{variant.name}:\n{server.log_tail()}"
    listed = {m.model for m in client.list().models}
    assert not any(name and name.startswith("created-seeded") for name in listed)


def test_every_malformed_model_in_the_store_is_refused_at_load(
    server: ServedProcess, client: ollama.Client
) -> None:
    for variant in VARIANTS:
        with pytest.raises(ollama.ResponseError) as caught:
            client.generate(model=seeded_name(variant), prompt="hi", options={"num_predict": 1})
        refused(caught, variant)
        assert server.alive(), f"{variant.name}:\n{server.log_tail()}"
    # The server still serves what is sound.
    assert client.generate(model="tiny", prompt="hello", options={"num_predict": 2}).done


def test_a_malformed_model_from_a_registry_is_refused_before_its_manifest(
    tmp_path: Path,
) -> None:
    picked = [v for v in VARIANTS if v.name in ("block_count_zero", "tensor_past_the_end")]
    store = ModelStore(tmp_path / "models")
    with running_registry(tmp_path / "registry") as registry:
        for variant in picked:
            registry.add_model("library", variant.name.replace("_", "-"), "latest", variant.data)
        for variant in picked:
            source = f"ollama://{registry.host}/library/{variant.name.replace('_', '-')}"
            with pytest.raises(InvalidModelFileError, match=variant.reason):
                Puller(store, PullOptions(insecure=True)).pull(source)
    assert store.names() == []


def test_api_pull_of_a_malformed_model_is_a_400(tmp_path: Path) -> None:
    variant = next(v for v in VARIANTS if v.name == "block_count_zero")
    store = ModelStore(tmp_path / "models")
    settings = settings_for(store.root, pull_allowed_hosts=["127.0.0.1"], pull_allow_insecure=True)
    with (
        running_registry(tmp_path / "registry") as registry,
        serve(settings, store) as server,
        ollama.Client(host=server.base_url) as client,
    ):
        registry.add_model("library", "zero-blocks", "latest", variant.data)
        with pytest.raises(ollama.ResponseError) as caught:
            client.pull(f"{registry.host}/library/zero-blocks", insecure=True)
        refused(caught, variant)
        assert client.list().models == []


def test_a_file_that_aborts_llama_cpp_is_refused_by_the_probe(tmp_path: Path) -> None:
    """The probe loads a file in a child process: llama.cpp's abort ends the child, not us."""
    aborting = next(v for v in VARIANTS if v.name == "block_count_zero").write(tmp_path)
    with pytest.raises(InvalidModelFileError, match=r"llama\.cpp aborted while loading it"):
        probe_model_file(aborting)
    broken = next(v for v in VARIANTS if v.name == "tensor_past_the_end").write(tmp_path)
    with pytest.raises(InvalidModelFileError, match=r"llama\.cpp cannot load it"):
        probe_model_file(broken)


def test_a_blob_is_probed_once(store: ModelStore) -> None:
    stored = store.get("tiny")
    probe_model(store, stored)
    assert store.is_marked(stored.model_digest, LOADS)
    record = store.root / ".corral" / LOADS / stored.model_path.name
    written = record.stat().st_ino
    probe_model(ModelStore(store.root), stored)  # a restart: the record says it loads
    assert record.stat().st_ino == written


def test_the_tensor_types_are_llama_cpps() -> None:
    """Block sizes and bytes per block as the ggml library that llama.cpp loads with says."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    ggml.ggml_type_size.restype = ctypes.c_size_t
    ggml.ggml_type_size.argtypes = [ctypes.c_int]
    ggml.ggml_blck_size.restype = ctypes.c_int64
    ggml.ggml_blck_size.argtypes = [ctypes.c_int]
    for ggml_type, (block, size) in GGML_TYPES.items():
        assert (ggml.ggml_blck_size(ggml_type), ggml.ggml_type_size(ggml_type)) == (block, size)


def test_corral_pull_records_that_the_model_loads(tmp_path: Path) -> None:
    """``corral pull`` (a pull Job's command) probes the model where the store is writable, so
    runtime pods, whose mount of it is read-only, find the record and do not load it twice."""
    store = ModelStore(tmp_path / "models")
    with running_registry(tmp_path / "registry") as registry:
        registry.add_model("library", "tiny", "latest", encode(tiny_model()))
        pulled = subprocess.run(
            [
                sys.executable,
                "-m",
                "corral_runtime.cli",
                "pull",
                f"ollama://{registry.host}/library/tiny",
                "--insecure",
                "--models",
                str(store.root),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert pulled.returncode == 0, pulled.stderr
    stored = store.get(f"{registry.host}/library/tiny")
    assert store.is_marked(stored.model_digest, LOADS)

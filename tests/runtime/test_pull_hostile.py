"""Pulls from a hostile registry: declared sizes are checked before anything is planned or
fetched, and a server's /api/pull reaches only what its policy allows (no loopback, private or
metadata addresses, no plain HTTP, no local files, redirects included), answering the same for a
local path that exists and one that does not."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral_runtime.store.layout import ModelNotFoundError, ModelStore
from corral_runtime.store.limits import (
    MAX_LAYERS,
    DeclaredSizeError,
    InsufficientSpaceError,
)
from corral_runtime.store.pull import Puller, PullOptions
from corral_runtime.store.transfer import PullError
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.support.gguf_corpus import encode, tiny_model
from tests.support.registry import TestRegistry, running_registry

pytestmark = pytest.mark.runtime

GGUF = encode(tiny_model())  # a valid model file: what the store accepts
# Far more than any planning may allocate for a refused pull (a part list for 2^62 bytes in
# 16 MiB parts is 2^38 entries).
MEMORY_BOUND = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.add_model("library", "tiny", "latest", GGUF, template="{{ .Prompt }}")
        reg.add_file("/files/tiny.gguf", GGUF)
        yield reg


@pytest.fixture(autouse=True)
def clean(registry: TestRegistry) -> Iterator[None]:
    registry.reset()
    yield
    registry.reset()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def pull_refused(store: ModelStore, source: str) -> PullError:
    """Pull (as the CLI does: any source allowed), expecting a refusal; memory stays flat."""
    tracemalloc.start()
    try:
        with pytest.raises(PullError) as caught:
            Puller(store, PullOptions(insecure=True)).pull(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND
    return caught.value


def blob_requests(registry: TestRegistry) -> list[str]:
    return [r.path for r in registry.requests() if "/blobs/" in r.path or "/files/" in r.path]


# -- declared sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "config_size", "message"),
    [
        ([("model", 2**62)], 2, "more than the 4.0 TiB corral accepts"),
        ([("model", 10), ("projector", 2**62)], 2, "more than the 4.0 TiB"),
        ([("model", 10)], 2**62, "more than the 4.0 TiB"),
        ([("model", 10), ("template", 512 * 1024 * 1024)], 2, "text layers may have at most"),
        ([("model", 10), ("license", 2**40)], 2, "text layers may have at most"),
        ([("model", 10)], 64 * 1024 * 1024, "the config layer"),
        ([("model", 10)] + [("template", 10)] * (MAX_LAYERS + 1), 2, "layers; at most"),
        ([("model", -1)], 2, "invalid manifest"),
        ([("model", 1.5)], 2, "invalid manifest"),
        ([("model", "12")], 2, "invalid manifest"),
        ([("model", True)], 2, "invalid size True"),
    ],
)
def test_manifests_declaring_impossible_layers_are_refused_before_planning(
    registry: TestRegistry,
    store: ModelStore,
    layers: list[tuple[str, object]],
    config_size: object,
    message: str,
) -> None:
    registry.add_declared_manifest("library", "liar", "latest", layers, config_size=config_size)
    error = pull_refused(store, f"ollama://{registry.host}/library/liar")
    assert message in str(error)
    assert blob_requests(registry) == []  # nothing was fetched
    assert not store.blobs.exists() or list(store.blobs.iterdir()) == []


def test_layers_that_do_not_fit_the_free_space_are_refused(
    registry: TestRegistry, store: ModelStore
) -> None:
    store.root.mkdir(parents=True)
    free = shutil.disk_usage(store.root).free
    # Each fits on its own (under the per-blob ceiling); together they do not fit the disk.
    half = free // 2 + 1024 * 1024 * 1024
    registry.add_declared_manifest(
        "library", "wide", "latest", [("model", half), ("adapter", half)]
    )
    error = pull_refused(store, f"ollama://{registry.host}/library/wide")
    assert isinstance(error, InsufficientSpaceError)
    assert "not enough space in the model store" in str(error)
    assert blob_requests(registry) == []


def test_a_file_claiming_a_huge_size_is_refused_before_planning(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.hostility.file_size = 2**62
    error = pull_refused(store, f"{registry.base_url}/files/tiny.gguf")
    assert isinstance(error, DeclaredSizeError)
    assert [r.method for r in registry.requests()] == ["HEAD"]  # no part was asked for


def test_corral_pull_refuses_a_huge_layer_with_a_clear_error_in_bounded_memory(
    registry: TestRegistry, tmp_path: Path
) -> None:
    registry.add_declared_manifest("library", "liar", "latest", [("model", 2**62)])

    def limit_memory() -> None:  # a planner allocating for 2^62 bytes dies here, not the host
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral_runtime.cli",
            "pull",
            f"ollama://{registry.host}/library/liar",
            "--insecure",
            "--models",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "declares 4611686018427387904 bytes" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# -- the server's pull policy --------------------------------------------------------------------


@pytest.fixture
def default_server(store: ModelStore) -> Iterator[RunningServer]:
    with serve(settings_for(store.root), store) as server:
        yield server


def test_local_paths_are_refused_alike_whether_they_exist_or_not(
    default_server: RunningServer, store: ModelStore, tmp_path: Path
) -> None:
    existing = tmp_path / "present.gguf"
    existing.write_bytes(GGUF)
    answers = []
    with httpx.Client(base_url=default_server.base_url, timeout=30) as http:
        for model in (
            str(existing),
            str(tmp_path / "absent.gguf"),
            f"file://{existing}",
            f"file://{tmp_path / 'absent.gguf'}",
            "pvc://claim/present.gguf",
        ):
            for stream in (False, True):
                r = http.post("/api/pull", json={"model": model, "stream": stream})
                answers.append((r.status_code, r.json()))
    assert answers == [(403, {"error": "pulling local files is not allowed on this server"})] * 10
    assert not store.blobs.exists()


def test_loopback_and_plain_http_registries_are_refused_by_default(
    default_server: RunningServer, registry: TestRegistry
) -> None:
    with ollama.Client(host=default_server.base_url) as client:
        with pytest.raises(ollama.ResponseError) as insecure:
            client.pull(f"{registry.host}/library/tiny", insecure=True)
        assert insecure.value.status_code == 403
        assert "plain-HTTP (insecure) pulls are not allowed" in insecure.value.error
        with pytest.raises(ollama.ResponseError) as loopback:
            client.pull(f"{registry.host}/library/tiny")
        assert loopback.value.status_code == 403
        assert "pulling from 127.0.0.1 is not allowed on this server" in loopback.value.error
    assert registry.requests() == []  # refused before any request


@pytest.mark.parametrize(
    "host",
    ["localhost:8080", "169.254.169.254", "10.0.0.1", "0.0.0.0", "[::1]:5000", "[::ffff:7f00:1]"],
)
def test_internal_addresses_are_refused_by_default(
    default_server: RunningServer, host: str
) -> None:
    # (Ollama model names take no IPv6 host: those are tried as URLs only.)
    names = [] if host.startswith("[") else [f"{host}/library/x"]
    with httpx.Client(base_url=default_server.base_url, timeout=30) as http:
        for model in (*names, f"https://{host}/x.gguf"):
            r = http.post("/api/pull", json={"model": model, "stream": False})
            assert r.status_code == 403, (model, r.text)
            assert "is not allowed on this server" in r.json()["error"]


@pytest.fixture
def allowing_server(store: ModelStore, registry: TestRegistry) -> Iterator[RunningServer]:
    settings = settings_for(
        store.root,
        pull_allowed_hosts=f"{registry.host},127.0.0.1:{registry.cdn_port}",
        pull_allow_insecure=True,
    )
    with serve(settings, store) as server:
        yield server


def test_a_configured_loopback_registry_is_allowed(
    allowing_server: RunningServer, registry: TestRegistry, store: ModelStore
) -> None:
    with ollama.Client(host=allowing_server.base_url) as client:
        done = client.pull(f"{registry.host}/library/tiny", insecure=True)
    assert done.status == "success"
    assert store.get(f"{registry.host}/library/tiny").model_path.read_bytes() == GGUF


@pytest.mark.parametrize(
    ("where", "target"),
    [
        ("blobs", "http://169.254.169.254/latest/meta-data/iam/x"),
        ("blobs", "http://localhost:{cdn}/blobs/x"),
        ("manifests", "http://10.1.2.3/v2/library/tiny/manifests/latest"),
        ("manifests", "http://127.0.0.1:9/v2/library/tiny/manifests/latest"),
    ],
)
def test_redirects_are_held_to_the_policy(
    allowing_server: RunningServer,
    registry: TestRegistry,
    store: ModelStore,
    where: str,
    target: str,
) -> None:
    target = target.format(cdn=registry.cdn_port)
    if where == "blobs":
        registry.hostility.redirect_blobs_to = target
    else:
        registry.hostility.redirect_manifests_to = target
    with (
        ollama.Client(host=allowing_server.base_url) as client,
        pytest.raises(ollama.ResponseError) as refused,
    ):
        for _ in client.pull(f"{registry.host}/library/tiny", insecure=True, stream=True):
            pass
    assert "is not allowed on this server" in refused.value.error
    assert registry.requests("cdn") == []
    with pytest.raises(ModelNotFoundError):
        store.get(f"{registry.host}/library/tiny")


def test_api_pull_answers_impossible_sizes_in_its_own_shape(
    allowing_server: RunningServer, registry: TestRegistry, store: ModelStore
) -> None:
    registry.add_declared_manifest("library", "liar", "latest", [("model", 2**62)])
    free = shutil.disk_usage(store.root.parent).free
    registry.add_declared_manifest("library", "wide", "latest", [("model", free + 1024**3)])
    with httpx.Client(base_url=allowing_server.base_url, timeout=30) as http:
        liar = {"model": f"{registry.host}/library/liar", "insecure": True}
        r = http.post("/api/pull", json={**liar, "stream": False})
        assert r.status_code == 400
        assert "more than the 4.0 TiB corral accepts for one blob" in r.json()["error"]
        streamed = http.post("/api/pull", json=liar).text.splitlines()
        assert streamed[0] == '{"status":"pulling manifest"}'
        assert "more than the 4.0 TiB" in streamed[-1] and '"error"' in streamed[-1]
        wide = {"model": f"{registry.host}/library/wide", "insecure": True, "stream": False}
        r = http.post("/api/pull", json=wide)
        assert r.status_code == 507
        assert "not enough space in the model store" in r.json()["error"]
    assert blob_requests(registry) == []


@pytest.mark.parametrize(
    ("auth", "what", "message"),
    [
        (False, "manifest_body_bytes", "is larger than 4194304 bytes"),
        (True, "token_body_bytes", "is larger than 65536 bytes"),
    ],
)
def test_a_registry_cannot_make_the_puller_hold_a_huge_answer(
    tmp_path: Path, store: ModelStore, auth: bool, what: str, message: str
) -> None:
    # 64 MiB sent under a claim of a terabyte: a reader that takes it all before looking at its
    # size holds it all.
    with running_registry(tmp_path / "registry", auth=auth) as reg:
        reg.add_model("library", "tiny", "latest", GGUF)
        setattr(reg.hostility, what, 64 * 1024 * 1024)
        error = pull_refused(store, f"ollama://{reg.host}/library/tiny")
    assert message in str(error)

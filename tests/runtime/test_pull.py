"""Pulls against a real registry on loopback: auth, redirects, faults, and every source kind."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_runtime.store.download import DigestMismatchError, SizeMismatchError
from corral_runtime.store.gguf import InvalidModelFileError
from corral_runtime.store.layout import MODEL_LAYER, ModelStore
from corral_runtime.store.pull import Puller, PullEvent, PullOptions
from corral_runtime.store.registry import ManifestNotFoundError
from corral_runtime.store.sources import InvalidSourceError, parse_source
from corral_runtime.store.transfer import (
    InsecureSourceError,
    PullError,
    RedirectRefusedError,
    RetryPolicy,
)
from tests.support.gguf_corpus import model_of_size
from tests.support.registry import LoggedRequest, TestRegistry, running_registry

pytestmark = pytest.mark.runtime

CHUNK = 256 * 1024
GGUF = model_of_size(3 * 1024 * 1024)  # a valid model file (pulls validate it), ~3 MiB
TEMPLATE = "{{ .Prompt }}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry"), auth=True) as reg:
        reg.add_model(
            "library", "tiny", "latest", GGUF, template=TEMPLATE, params={"temperature": 0.2}
        )
        yield reg


@pytest.fixture(autouse=True)
def clean_faults(registry: TestRegistry) -> Iterator[None]:
    registry.reset()
    yield
    registry.reset()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def puller(store: ModelStore, **kwargs: object) -> Puller:
    policy = RetryPolicy(
        attempts=5,
        base_delay=0.01,
        max_delay=0.05,
        stall_timeout=float(kwargs.pop("stall_timeout", 10.0)),
    )  # type: ignore[arg-type]
    options = PullOptions(insecure=True, chunk_size=CHUNK, policy=policy, **kwargs)  # type: ignore[arg-type]
    return Puller(store, options)


def source(registry: TestRegistry, model: str = "tiny") -> str:
    return f"ollama://{registry.host}/library/{model}"


def leftovers(store: ModelStore) -> list[str]:
    """Files in blobs/ that are not complete blobs (partials, sidecars, locks, temp files)."""
    if not store.blobs.is_dir():
        return []
    return sorted(
        p.name
        for p in store.blobs.iterdir()
        if not (p.name.startswith("sha256-") and len(p.name) == 71)
    )


def test_pull_with_token_auth_and_cdn_redirect(registry: TestRegistry, store: ModelStore) -> None:
    events: list[PullEvent] = []
    model = puller(store).pull(source(registry), report=events.append)

    raw = registry.state.manifests[("library", "tiny", "latest")]
    assert store.manifest_path(model.name).read_bytes() == raw
    assert model.model_path.read_bytes() == GGUF
    assert model.template == TEMPLATE and model.params == {"temperature": 0.2}
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    model_digest = model.model_digest
    pulling = [e for e in events if e.digest == model_digest]
    assert pulling[0].status == f"pulling {model_digest[7:19]}"
    assert pulling[-1].completed == pulling[-1].total == len(GGUF)
    # A token was fetched through the challenge, and never sent on to the CDN.
    assert any(r.path.startswith("/token") for r in registry.requests("registry"))
    cdn = registry.requests("cdn")
    assert len([r for r in cdn if r.path.startswith(f"/blobs/{model_digest}")]) > 1  # parts
    assert all("Authorization" not in r.headers for r in cdn)
    assert leftovers(store) == []


def test_credentials_do_not_follow_a_redirect_to_another_host_name(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.use_cdn_alias()
    puller(store).pull(source(registry))
    assert registry.requests("cdn")
    assert all("Authorization" not in r.headers for r in registry.requests("cdn"))


def test_redirect_carrying_credentials_is_refused(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.state.redirect_credentials = True
    with pytest.raises(RedirectRefusedError):
        puller(store).pull(source(registry))
    assert registry.requests("cdn") == []
    assert not store.manifests.exists()


def test_plain_http_registry_needs_insecure(registry: TestRegistry, store: ModelStore) -> None:
    with pytest.raises(InsecureSourceError, match="--insecure"):
        Puller(store, PullOptions(insecure=False)).pull(source(registry))


def test_unknown_model(registry: TestRegistry, store: ModelStore) -> None:
    with pytest.raises(ManifestNotFoundError):
        puller(store).pull(source(registry, "nope"))


def test_503s_and_429s_are_retried(registry: TestRegistry, store: ModelStore) -> None:
    registry.faults.fail_next = 3
    registry.faults.retry_after = "0"
    registry.faults.manifest_fail_next = 2
    model = puller(store).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF
    registry.faults.fail_status = 429
    registry.faults.fail_next = 2
    other = ModelStore(store.root.parent / "other")
    assert puller(other).pull(source(registry)).model_path.read_bytes() == GGUF


def test_persistent_503_gives_up_with_a_clear_error(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.faults.fail_next = 1000
    with pytest.raises(PullError, match="giving up"):
        puller(store).pull(source(registry))
    assert not store.manifests.exists()
    assert not (store.blobs / f"sha256-{hashlib.sha256(GGUF).hexdigest()}").exists()


def test_dropped_connections_continue_where_they_stopped(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.faults.drop_after_bytes = 100_000
    registry.faults.drop_next = 4
    model = puller(store).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF
    ranges = [r.headers.get("Range", "") for r in registry.requests("cdn")]
    # Retried parts ask for the rest of the part, not for the part again.
    starts = {int(r.split("=")[1].split("-")[0]) for r in ranges if r}
    assert any(s % CHUNK == 100_000 for s in starts)


def cdn_parts(registry: TestRegistry) -> list[LoggedRequest]:
    digest = "sha256:" + hashlib.sha256(GGUF).hexdigest()
    return [r for r in registry.requests("cdn") if r.path.startswith(f"/blobs/{digest}")]


def test_parts_after_the_redirect_share_one_kept_alive_connection(
    registry: TestRegistry, store: ModelStore
) -> None:
    model = puller(store, workers=1).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF
    parts = cdn_parts(registry)
    assert len(parts) == -(-len(GGUF) // CHUNK)  # one request per part, none repeated
    # The first part followed the registry's redirect; the others went to the CDN URL it gave,
    # one after another on one connection, with no credentials.
    assert len({r.client_port for r in parts[1:]}) == 1
    assert all("Authorization" not in r.headers for r in parts)


def test_failures_after_the_redirect_are_retried(registry: TestRegistry, store: ModelStore) -> None:
    # The first part resolves the CDN URL; parts fetched from it then meet two 503s and two
    # dropped connections.
    registry.faults.pass_next = 1
    registry.faults.fail_next = 2
    registry.faults.retry_after = "0"
    registry.faults.drop_after_bytes = 100_000
    registry.faults.drop_next = 2
    model = puller(store, workers=1).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF
    starts = [int(r.headers["Range"][6:].partition("-")[0]) for r in cdn_parts(registry)]
    assert any(s % CHUNK == 100_000 for s in starts)  # a dropped part continued where it was
    assert leftovers(store) == []


def test_expired_cdn_url_is_resolved_again(registry: TestRegistry, store: ModelStore) -> None:
    registry.faults.pass_next = 1
    registry.faults.fail_status = 403
    registry.faults.fail_next = 1
    model = puller(store, workers=1).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF
    digest = "sha256:" + hashlib.sha256(GGUF).hexdigest()
    asked = [r for r in registry.requests("registry") if r.path.endswith(f"/blobs/{digest}")]
    assert len(asked) == 2  # the first redirect, then a fresh one after the 403


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key."""
    cert, key = directory / "cdn.crt", directory / "cdn.key"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    command += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def test_parts_from_an_https_cdn(
    tmp_path: Path, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    with running_registry(tmp_path / "tls", auth=True, cdn_tls=(cert, key)) as reg:
        reg.add_model("library", "tiny", "latest", GGUF)
        # Untrusted: no part is fetched from a CDN whose certificate does not verify.
        with pytest.raises(PullError):
            puller(store, workers=2).pull(source(reg))
        assert not store.manifests.exists()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        model = puller(store, workers=2).pull(source(reg))
        assert model.model_path.read_bytes() == GGUF
        ranges = {r.headers["Range"] for r in cdn_parts(reg)}
        assert len(ranges) == -(-len(GGUF) // CHUNK)


# The stall hits the first part (through the registry's redirect), or a later one (on a direct
# connection to the CDN URL it gave).
@pytest.mark.parametrize(("passed", "workers"), [(0, 4), (1, 1)])
def test_stalled_body_is_retried(
    registry: TestRegistry, store: ModelStore, passed: int, workers: int
) -> None:
    registry.faults.pass_next = passed
    registry.faults.drop_after_bytes = 10_000
    registry.faults.drop_next = 1
    registry.faults.stall_seconds = 3.0
    model = puller(store, workers=workers, stall_timeout=0.5).pull(source(registry))
    assert model.model_path.read_bytes() == GGUF


def test_slow_body_still_completes(registry: TestRegistry, store: ModelStore) -> None:
    registry.faults.slow_seconds_per_mib = 0.2
    assert puller(store).pull(source(registry)).model_path.read_bytes() == GGUF


def test_wrong_bytes_never_become_visible(registry: TestRegistry, store: ModelStore) -> None:
    registry.faults.corrupt = True
    with pytest.raises(DigestMismatchError):
        puller(store).pull(source(registry))
    digest = hashlib.sha256(GGUF).hexdigest()
    assert not (store.blobs / f"sha256-{digest}").exists()
    assert not store.manifests.exists()
    assert [n for n in leftovers(store) if not n.endswith(".json")] == []


def test_server_ignoring_range_falls_back_to_one_stream(
    registry: TestRegistry, store: ModelStore
) -> None:
    registry.faults.ignore_range = True
    assert puller(store).pull(source(registry)).model_path.read_bytes() == GGUF


def _publish_tampered(registry: TestRegistry, model: str, mutate: dict[str, object]) -> None:
    doc = json.loads(registry.state.manifests[("library", "tiny", "latest")])
    doc["layers"][0].update(mutate)
    registry.add_raw_manifest("library", model, "latest", json.dumps(doc).encode())


def test_size_that_does_not_match_is_refused(registry: TestRegistry, store: ModelStore) -> None:
    _publish_tampered(registry, "wrongsize", {"size": len(GGUF) + 1})
    with pytest.raises(SizeMismatchError):
        puller(store).pull(source(registry, "wrongsize"))
    assert not store.manifests.exists()
    assert list(store.blobs.glob("*-partial*")) == []


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../etc/passwd", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256-" + "0" * 63],
)
def test_bad_digests_are_refused_before_any_file_is_touched(
    registry: TestRegistry, store: ModelStore, digest: str
) -> None:
    _publish_tampered(registry, "baddigest", {"digest": digest})
    with pytest.raises(PullError, match="invalid"):
        puller(store).pull(source(registry, "baddigest"))
    assert not store.root.exists() or not any(store.root.rglob("*passwd*"))
    assert registry.requests("cdn") == []


@pytest.mark.parametrize("name", ["../evil", "library/../../evil", "a/b/c/d", "x:y:z/.."])
def test_path_traversal_names_are_refused(registry: TestRegistry, name: str) -> None:
    with pytest.raises(InvalidSourceError):
        parse_source(f"ollama://{registry.host}/{name}")


def test_template_system_params_layers_override(registry: TestRegistry, store: ModelStore) -> None:
    model = puller(store, template="T", system="S", params={"top_k": 3}).pull(
        source(registry), name=None
    )
    assert (model.template, model.system) == ("T", "S")
    assert model.params == {"temperature": 0.2, "top_k": 3}


def test_digest_pin(registry: TestRegistry, store: ModelStore) -> None:
    with pytest.raises(PullError, match="does not match the pinned"):
        puller(store, expected_digest="sha256:" + "0" * 64).pull(source(registry))
    pinned = "sha256:" + hashlib.sha256(GGUF).hexdigest()
    assert puller(store, expected_digest=pinned).pull(source(registry)).model_digest == pinned


def test_hf_source(
    registry: TestRegistry, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add_file("/org/repo/resolve/v1/sub/tiny-Q4.gguf", GGUF)
    monkeypatch.setenv("CORRAL_HF_ENDPOINT", registry.base_url)
    events: list[PullEvent] = []
    model = puller(store, template=TEMPLATE).pull(
        "hf://org/repo/sub/tiny-Q4.gguf@v1", report=events.append
    )
    assert str(model.name) == "hf.co/org/repo:tiny-Q4"
    assert model.model_path.read_bytes() == GGUF and model.template == TEMPLATE
    assert model.manifest.layer(MODEL_LAYER) is not None
    # The digest came from X-Linked-Etag, so progress named it from the start.
    assert events[1].status == f"pulling {model.model_digest[7:19]}"
    with pytest.raises(PullError, match="does not exist"):
        puller(store).pull("hf://org/repo/missing.gguf")


def test_https_source_without_advertised_digest(registry: TestRegistry, store: ModelStore) -> None:
    registry.add_file("/files/plain.gguf", GGUF)
    registry.state.redirect = False
    try:
        model = puller(store).pull(f"http://{registry.host}/files/plain.gguf")
    finally:
        registry.state.redirect = True
    assert str(model.name) == f"{registry.host}/library/plain:latest"
    assert model.model_path.read_bytes() == GGUF
    assert leftovers(store) == []


def test_local_source_and_non_gguf_refused(store: ModelStore, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUF)
    model = puller(store).pull(str(path))
    assert str(model.name) == "local/library/m:latest"
    assert model.model_path.read_bytes() == GGUF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(InvalidModelFileError, match="not a valid model file: not a GGUF"):
        puller(store).pull(str(bad))

"""parse_source: every accepted form, the defaults it fills in, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.settings import SourceSettings
from corral_runtime.store.sources import (
    HuggingFaceSource,
    InvalidSourceError,
    LocalSource,
    OllamaSource,
    UrlSource,
    parse_source,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        ("ollama://llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("ollama://someone/model", ("registry.ollama.ai", "someone", "model", "latest")),
        ("ollama://reg.example:5000/ns/m:v1", ("reg.example:5000", "ns", "m", "v1")),
        ("  gemma3:270m  ", ("registry.ollama.ai", "library", "gemma3", "270m")),
    ],
)
def test_ollama_names(raw: str, parts: tuple[str, str, str, str]) -> None:
    source = parse_source(raw)
    assert isinstance(source, OllamaSource)
    assert source.name.parts == parts
    assert source.default_name() == source.name


def test_huggingface_with_and_without_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_HF_ENDPOINT", raising=False)
    src = parse_source("hf://unsloth/gemma-3-GGUF/sub/dir/gemma-3-Q4_K_M.gguf")
    assert src == HuggingFaceSource("unsloth", "gemma-3-GGUF", "sub/dir/gemma-3-Q4_K_M.gguf")
    assert src.url(SourceSettings().hf_endpoint) == (
        "https://huggingface.co/unsloth/gemma-3-GGUF/resolve/main/sub/dir/gemma-3-Q4_K_M.gguf"
    )
    pinned = parse_source("hf://org/repo/m.gguf@refs/pr/1")
    assert isinstance(pinned, HuggingFaceSource)
    assert pinned.revision == "refs/pr/1"
    assert "/resolve/refs%2Fpr%2F1/m.gguf" in pinned.url(SourceSettings().hf_endpoint)
    assert str(src.default_name()) == "hf.co/unsloth/gemma-3-GGUF:gemma-3-Q4_K_M"


def test_huggingface_endpoint_is_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HF_ENDPOINT", "http://127.0.0.1:9/")
    src = parse_source("hf://o/r/f.gguf@abc123")
    assert isinstance(src, HuggingFaceSource)
    assert src.url(SourceSettings().hf_endpoint) == "http://127.0.0.1:9/o/r/resolve/abc123/f.gguf"


def test_huggingface_org_with_dot_gets_a_valid_store_name() -> None:
    src = parse_source("hf://my.org/repo/file.gguf")
    assert src.default_name().namespace == "my-org"


def test_urls() -> None:
    src = parse_source("https://example.com/models/tiny%20model.gguf?download=1")
    assert isinstance(src, UrlSource)
    assert src.secure
    assert str(src.default_name()) == "example.com/library/tiny-model:latest"
    plain = parse_source("http://127.0.0.1:8080/x.gguf")
    assert isinstance(plain, UrlSource) and not plain.secure


def test_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("./m.gguf") == LocalSource(str(tmp_path / "m.gguf"))
    assert parse_source("sub/../m.gguf") == LocalSource(str(tmp_path / "m.gguf"))
    assert parse_source("/abs/x.GGUF") == LocalSource("/abs/x.GGUF")
    assert parse_source("file:///abs/y.gguf") == LocalSource("/abs/y.gguf")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_source("~/z.gguf") == LocalSource(str(tmp_path / "z.gguf"))
    assert str(parse_source("/abs/x.gguf").default_name()) == "local/library/x:latest"


def test_pvc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PVC_ROOT", "/mnt/claims")
    src = parse_source("pvc://model-cache/dir/m.gguf", pvc_root=SourceSettings().pvc_root)
    assert src == LocalSource("/mnt/claims/model-cache/dir/m.gguf", claim="model-cache")
    assert str(src.default_name()) == "pvc/model-cache/m:latest"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "s3://bucket/m.gguf",
        "ftp://host/m.gguf",
        "ollama://../etc/passwd",
        "../../etc:passwd",
        "ollama://a/b/c/d",
        "ollama://",
        "a b",
        "hf://org/repo",
        "hf://org/repo/../../secret.gguf",
        "hf://org/repo/./m.gguf",
        "hf://org/repo//m.gguf",
        "hf://org/repo/m.bin",
        "hf://../repo/m.gguf",
        "hf://org/repo/m.gguf@../main",
        "hf://org/repo/m.gguf@",
        "https:///m.gguf",
        "https://user:pw@host/m.gguf",
        "https://host/m.bin",
        "https://host:99999/m.gguf",
        "pvc://Bad_Claim/m.gguf",
        "pvc://claim/../m.gguf",
        "pvc://claim/",
        "file://otherhost/m.gguf",
        "/etc/passwd",
    ],
)
def test_rejects(raw: str) -> None:
    with pytest.raises(InvalidSourceError):
        parse_source(raw)


def test_rejection_says_what_is_accepted() -> None:
    with pytest.raises(InvalidSourceError, match=r"ollama://, hf://, https://, pvc://"):
        parse_source("s3://bucket/key.gguf")

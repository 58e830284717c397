from __future__ import annotations

import pytest

from corral_operator.sources import InvalidSourceError, parse_source, served_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "scheme", "location"),
    [
        ("gemma3:270m", "ollama", "gemma3:270m"),
        ("llama3.2", "ollama", "llama3.2:latest"),
        ("ollama://library/qwen3:0.6b", "ollama", "qwen3:0.6b"),
        ("ollama://me/custom", "ollama", "me/custom:latest"),
        ("ollama://reg.example:5000/team/m:q4", "ollama", "reg.example:5000/team/m:q4"),
        ("hf://org/repo/m-Q4_K_M.gguf@main", "hf", "org/repo/m-Q4_K_M.gguf@main"),
        ("https://example.com/a/m.gguf", "https", "example.com/a/m.gguf"),
        ("pvc://weights/dir/m.gguf", "pvc", "weights/dir/m.gguf"),
    ],
)
def test_parses_every_scheme(raw: str, scheme: str, location: str) -> None:
    source = parse_source(raw)
    assert (source.scheme, source.location) == (scheme, location)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " gemma",
        "ftp://x/y",
        "hf://org/repo/file.bin",
        "pvc://Bad/x",
        "a/b/c/d",
        "ollama://../etc",
        "https://",
    ],
)
def test_rejects_bad_sources(raw: str) -> None:
    with pytest.raises(InvalidSourceError):
        parse_source(raw)


def test_served_name() -> None:
    assert served_name(parse_source("gemma3:270m"), "gemma") == "gemma3:270m"
    assert served_name(parse_source("https://h/m.gguf"), "my-model") == "my-model:latest"

"""/api/show's capabilities from the model file and its template, as Ollama reports them: an
embedding model (its GGUF gives a pooling type, or its attention is not causal) is listed as
``embedding`` and not ``completion``; every other model completes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral_runtime.api.errors import ApiError
from corral_runtime.api.generation import check_capabilities
from corral_runtime.api.info import embedding_model, show_entry
from corral_runtime.store.gguf import GGUFDetails
from corral_runtime.store.layout import ModelStore
from tests.support.gguf_corpus import BOOL, U32, encode, tiny_model

pytestmark = pytest.mark.unit

TOOLS_TEMPLATE = "{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}"


@pytest.mark.parametrize(
    ("metadata", "embedding"),
    [
        ({"general.architecture": "llama"}, False),
        ({"general.architecture": "bert", "bert.pooling_type": 1}, True),
        # Present is enough, as Ollama decides (even "none", which llama.cpp pools as none).
        ({"general.architecture": "gemma-embedding", "gemma-embedding.pooling_type": 0}, True),
        ({"general.architecture": "llama", "llama.attention.causal": False}, True),
        ({"general.architecture": "llama", "llama.attention.causal": True}, False),
        # Another architecture's key says nothing about this one.
        ({"general.architecture": "llama", "bert.pooling_type": 1}, False),
        ({"bert.pooling_type": 1}, False),
        ({"general.architecture": 7, "7.pooling_type": 1}, False),
    ],
)
def test_embedding_model(metadata: dict[str, Any], embedding: bool) -> None:
    assert embedding_model(metadata) is embedding


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def _stored(store: ModelStore, name: str, *kvs: tuple[str, int, Any]) -> Any:
    spec = tiny_model()
    for key, vtype, value in kvs:
        spec = spec.with_kv(key, vtype, value)
    path = store.root.parent / f"{name}.gguf"
    path.write_bytes(encode(spec))
    store.create_model(f"{name}:1", path, template=TOOLS_TEMPLATE)
    return store.get(f"{name}:1")


def test_a_causal_lm_completes(store: ModelStore) -> None:
    stored = _stored(store, "causal")
    assert show_entry(stored, verbose=False)["capabilities"] == ["completion", "tools"]


@pytest.mark.parametrize(
    "kv", [("llama.pooling_type", U32, 1), ("llama.attention.causal", BOOL, False)]
)
def test_an_embedding_model_is_listed_as_one(store: ModelStore, kv: tuple[str, int, Any]) -> None:
    stored = _stored(store, "encoder", kv)
    # The template's capabilities still follow, as Ollama lists them.
    assert show_entry(stored, verbose=False)["capabilities"] == ["embedding", "tools"]


@dataclass(frozen=True)
class _Loaded:
    """What check_capabilities reads of a loaded model."""

    name: str
    details: GGUFDetails
    template: Any


@pytest.mark.parametrize("action", ["generate", "chat"])
def test_an_embedding_model_refuses_to_generate_in_ollamas_words(action: str) -> None:
    metadata = {"general.architecture": "bert", "bert.pooling_type": 1}
    details = GGUFDetails.from_metadata(metadata)
    assert details.embedding
    model = _Loaded("all-minilm:latest", details, template=None)
    with pytest.raises(ApiError) as refused:
        check_capabilities(model, think=None, images=False, tools=False, action=action)  # type: ignore[arg-type]
    assert refused.value.status == 400
    assert str(refused.value) == f'"all-minilm:latest" does not support {action}'
    causal = GGUFDetails.from_metadata({"general.architecture": "llama"})
    assert not causal.embedding

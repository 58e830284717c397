"""The bundled test model is real: it is a GGUF that llama.cpp loads and generates from, and the
seeded store entry resolves to its bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.store.digests import sha256_file
from corral_runtime.store.gguf import read_gguf_details
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME

pytestmark = pytest.mark.runtime


def test_model_file_is_gemma3(test_model_path: Path) -> None:
    assert test_model_path.stat().st_size == 253_113_024
    details = read_gguf_details(test_model_path)
    assert details.architecture == "gemma3"
    assert details.quantization_level == "Q4_K_M"
    assert details.chat_template is None  # the base model ships no chat template


def test_store_entry_resolves_to_the_model(model_store: ModelStore, test_model_path: Path) -> None:
    model = model_store.get(TEST_MODEL_NAME)
    assert model.name.display == "gemma3:270m"
    assert model.model_path.stat().st_size == test_model_path.stat().st_size
    assert sha256_file(model.model_path) == model.model_digest
    assert model.template is not None and "<start_of_turn>" in model.template
    assert "<end_of_turn>" in model.params["stop"]


def test_llama_cpp_generates_tokens(test_model_path: Path) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(test_model_path), n_ctx=256, n_threads=2, verbose=False, seed=1)
    try:
        out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0
        assert out["choices"][0]["text"].strip()
    finally:
        llm.close()

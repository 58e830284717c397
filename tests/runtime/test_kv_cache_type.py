"""The KV cache type a server is given is the one llama.cpp holds the conversation in.

``CORRAL_KV_CACHE_TYPE`` / ``--kv-cache-type`` (what the operator sets from a ModelServer's
``spec.runtime.kvCacheType``) reaches llama.cpp's context: a sequence's cached state takes the
bytes of that type, the server says which type it loaded with, and a quantized cache still
answers through the official client.
"""

from __future__ import annotations

import logging

import llama_cpp
import ollama
import pytest

from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext, Row
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME
from tests.runtime.conftest import serve, settings_for

pytestmark = pytest.mark.runtime

PROMPT = "<start_of_turn>user\nName three colours.<end_of_turn>\n<start_of_turn>model\n"


def _cached_bytes(model_store: ModelStore, kv_cache_type: str) -> int:
    """The bytes llama.cpp saves for one sequence that holds the prompt's KV cells."""
    stored = model_store.get(TEST_MODEL_NAME)
    context = LlamaBatchContext(
        ContextConfig(
            stored.model_path,
            n_ctx=256,
            parallel=1,
            n_batch=64,
            n_threads=2,
            kv_cache_type=kv_cache_type,
        )
    )
    try:
        tokens = context.tokenize(PROMPT)
        context.decode([Row(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
        return int(llama_cpp.llama_state_seq_get_size(context.ctx, 0))
    finally:
        context.close()


def test_llama_cpp_holds_the_cache_in_the_type_asked_for(model_store: ModelStore) -> None:
    f16, q8_0, q4_0 = (_cached_bytes(model_store, t) for t in ("f16", "q8_0", "q4_0"))
    # q8_0 stores 32 values in 34 bytes and q4_0 in 18, where f16 takes 64.
    assert q8_0 < f16 * 0.6
    assert q4_0 < q8_0 * 0.6


def test_the_server_loads_and_answers_with_a_quantized_cache(
    model_store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    sizes = {}
    for kv_cache_type in ("f16", "q8_0"):
        settings = settings_for(model_store.root, kv_cache_type=kv_cache_type)
        with (
            caplog.at_level(logging.INFO, logger="corral_runtime.engine.manager"),
            serve(settings, model_store) as server,
            ollama.Client(host=server.base_url) as client,
        ):
            reply = client.chat(
                model=TEST_MODEL_NAME,
                messages=[{"role": "user", "content": "Name three colours."}],
                options={"temperature": 0, "num_predict": 12},
            )
            assert reply.message.content
            (running,) = client.ps().models
            sizes[kv_cache_type] = running.size
        assert f"kv_cache_type={kv_cache_type}" in caplog.text
    # /api/ps counts the smaller cache in the model's size.
    assert sizes["q8_0"] < sizes["f16"]
    # A quantized cache runs with flash attention (llama.cpp needs it for the V cache).
    assert "kv_cache_type=q8_0, flash_attention=on" in caplog.text

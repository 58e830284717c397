"""``CORRAL_TENSOR_SPLIT`` (what the operator sets when a model's layers are split across a pod's
GPUs) reaches llama.cpp's model parameters: a split llama.cpp can hold loads and decodes (on a
machine without GPUs llama.cpp has one device and the split changes nothing), and a split over
more devices than llama.cpp supports is refused before the model is read, never handed to it."""

from __future__ import annotations

import llama_cpp
import pytest

from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext, Row
from corral_runtime.engine.types import EngineError
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME

pytestmark = pytest.mark.runtime


def _config(model_store: ModelStore, split: tuple[float, ...]) -> ContextConfig:
    stored = model_store.get(TEST_MODEL_NAME)
    return ContextConfig(
        stored.model_path, n_ctx=128, parallel=1, n_batch=32, n_threads=2, tensor_split=split
    )


def test_a_split_llama_cpp_can_hold_loads_and_decodes(model_store: ModelStore) -> None:
    context = LlamaBatchContext(_config(model_store, (1.0,)))
    try:
        tokens = context.tokenize("Hello")
        context.decode([Row(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
        assert context._tensor_split[0] == 1.0  # what llama.cpp read while it loaded
    finally:
        context.close()


def test_a_split_over_more_devices_than_llama_cpp_has_is_refused(model_store: ModelStore) -> None:
    devices = int(llama_cpp.llama_max_devices())
    with pytest.raises(EngineError, match=f"more than {devices} GPUs"):
        LlamaBatchContext(_config(model_store, (1.0,) * (devices + 1)))

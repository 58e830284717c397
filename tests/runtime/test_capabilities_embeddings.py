"""Both real test models on a real server: ``/api/show`` lists their capabilities as Ollama does
(each a causal LM: ``completion``, and ``tools`` where the template renders tools, which Qwen's
GGUF template does and the Gemma test model's does not), and both embed on both APIs: vectors of
the model's embedding length, L2-normalized, different for different text, the same for the
same text on either API. A model whose GGUF gives a pooling type is an ``embedding`` model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from corral_runtime.instructmodel import INSTRUCT_MODEL_NAME
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.support.gguf_corpus import U32, encode, tiny_model

pytestmark = pytest.mark.runtime

# name, the store fixture that holds it, its capabilities, its embedding length (GGUF header)
MODELS = [
    (TEST_MODEL_NAME, "model_store", ["completion"], 640),
    (INSTRUCT_MODEL_NAME, "instruct_store", ["completion", "tools"], 896),
]


@pytest.fixture(params=MODELS, ids=[m[0] for m in MODELS])
def model(request: pytest.FixtureRequest) -> Iterator[tuple[str, RunningServer, list[str], int]]:
    name, store_fixture, capabilities, width = request.param
    store: ModelStore = request.getfixturevalue(store_fixture)
    with serve(settings_for(store.root), store) as server:
        yield name, server, capabilities, width


def _unit(vector: list[float]) -> bool:
    return math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)


def test_capabilities_and_embeddings_on_both_apis(
    model: tuple[str, RunningServer, list[str], int],
) -> None:
    name, server, capabilities, width = model
    with (
        ollama.Client(host=server.base_url) as native,
        openai.OpenAI(base_url=server.openai_url, api_key="unused") as compatible,
    ):
        assert native.show(name).capabilities == capabilities

        embedded = native.embed(model=name, input=["hello world", "a cat sat"]).embeddings
        assert [len(v) for v in embedded] == [width, width]
        assert all(_unit(v) for v in embedded) and embedded[0] != embedded[1]

        answer = compatible.embeddings.create(model=name, input=["hello world"])
        (item,) = answer.data
        assert len(item.embedding) == width and _unit(item.embedding)
        assert all(
            math.isclose(a, b, abs_tol=1e-5)
            for a, b in zip(item.embedding, embedded[0], strict=True)
        )
        assert answer.usage.prompt_tokens > 0


def test_an_embedding_model_is_shown_as_one(tmp_path: Path) -> None:
    # The tiny llama model with the pooling type an embedding GGUF carries.
    path = tmp_path / "encoder.gguf"
    path.write_bytes(encode(tiny_model().with_kv("llama.pooling_type", U32, 1)))
    store = ModelStore(tmp_path / "models")
    store.create_model("encoder:1", path, template="{{ .Prompt }}")
    with serve(settings_for(store.root), store) as server, ollama.Client(server.base_url) as c:
        assert c.show("encoder:1").capabilities == ["embedding"]

"""Request fields do what they say, through the official clients against the real model:
JSON-schema formats keep their order and bounds, and metrics label known models only."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
# "Reason first, answer last", with a bounded answer: the order and the bound must both hold.
AGE_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["reasoning", "age"],
    "additionalProperties": False,
}
MESSAGE = {"role": "user", "content": "Hi"}
PROMPT = "How many years did the oldest tree on Earth live? Answer in JSON."


@pytest.fixture
def client(runtime_server: RunningServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=runtime_server.base_url) as client:
        yield client


@pytest.fixture
def oai(runtime_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=runtime_server.openai_url, api_key="unused") as client:
        yield client


def check_age_answer(text: str) -> None:
    answer = json.loads(text)
    assert list(answer) == ["reasoning", "age"]
    assert isinstance(answer["age"], int) and 0 <= answer["age"] <= 120, answer


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ollama_format_schema_keeps_order_and_bounds(client: ollama.Client, seed: int) -> None:
    response = client.generate(
        model=MODEL,
        prompt=PROMPT,
        format=AGE_SCHEMA,
        options={"temperature": 1.5, "seed": seed, "num_predict": 48},
    )
    assert response.done_reason == "stop"
    check_age_answer(response.response)


@pytest.mark.parametrize("seed", [5, 6])
def test_openai_json_schema_keeps_order_and_bounds(oai: openai.OpenAI, seed: int) -> None:
    completion = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "age", "schema": AGE_SCHEMA},
        },
        temperature=1.5,
        seed=seed,
        max_tokens=48,
    )
    assert completion.choices[0].finish_reason == "stop"
    check_age_answer(completion.choices[0].message.content or "")


def request_series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("corral_requests")}


def test_metrics_label_only_models_the_server_has(runtime_server: RunningServer) -> None:
    base = runtime_server.base_url
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post(
            "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}},
        )
        before = request_series(http.get("/metrics").text)
        for i in range(40):
            name = f"nobody-has-this-{secrets.token_hex(4)}:{i}"
            assert http.post("/api/chat", json={"model": name, "messages": []}).status_code == 404
            http.post("/v1/chat/completions", json={"model": name, "messages": [MESSAGE]})
            http.post("/api/show", json={"model": f"Not A Valid Name {i}!"})
        text = http.get("/metrics").text
    after = request_series(text)
    assert "nobody-has-this" not in text and "Not A Valid" not in text
    # The 120 names add at most one series per endpoint and status.
    assert len(after - before) <= 6, after - before
    assert 'corral_requests_total{endpoint="/api/chat",model="unknown",status="404"}' in text
    assert f'endpoint="/api/generate",model="{MODEL}",status="200"' in text


def test_openai_embeddings_take_token_ids(oai: openai.OpenAI, test_model_path: Path) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(test_model_path), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(b"The sky is blue.", add_bos=True)
    other = vocab.tokenize(b"Rust is a language.", add_bos=True)
    text = oai.embeddings.create(model=MODEL, input="The sky is blue.").data[0].embedding
    one = oai.embeddings.create(model=MODEL, input=tokens)
    many = oai.embeddings.create(model=MODEL, input=[tokens, other])
    assert len(one.data) == 1 and len(many.data) == 2
    assert one.usage.prompt_tokens == len(tokens)
    for vector in (one.data[0].embedding, many.data[0].embedding):
        assert max(abs(a - b) for a, b in zip(vector, text, strict=True)) < 1e-4
    assert many.data[1].embedding != many.data[0].embedding


def test_openai_embeddings_refuse_token_ids_outside_the_vocabulary(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not in the model's vocabulary"):
        oai.embeddings.create(model=MODEL, input=[2, 10**9])

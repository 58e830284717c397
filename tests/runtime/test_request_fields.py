"""Request fields do what they say, through the official clients against the real model:
JSON-schema formats keep their order and bounds, and metrics label known models only."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
    },
    "required": ["reasoning", "age", "score"],
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
    assert list(answer) == ["reasoning", "age", "score"]
    assert isinstance(answer["age"], int) and 0 <= answer["age"] <= 120, answer
    assert 0 < answer["score"] <= 10, answer


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ollama_format_schema_keeps_order_and_bounds(client: ollama.Client, seed: int) -> None:
    response = client.generate(
        model=MODEL,
        prompt=PROMPT,
        format=AGE_SCHEMA,
        options={"temperature": 1.5, "seed": seed, "num_predict": 64},
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
        max_tokens=64,
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


# -- log-probabilities and context -------------------------------------------------------------

GREEDY = {"temperature": 0, "num_predict": 6}


def check_entries(entries: list[Any], top: int) -> None:
    """Each token's record: a log-probability, its bytes, and the ``top`` most likely tokens,
    most likely first, the greedy choice among them first."""
    assert entries
    for entry in entries:
        token, logprob, alternatives = entry_fields(entry)
        assert logprob <= 0
        assert len(alternatives) == top
        values = [lp for _, lp in alternatives]
        assert values == sorted(values, reverse=True)
        if top:
            assert alternatives[0] == (token, logprob)


def entry_fields(entry: Any) -> tuple[str, float, list[tuple[str, float]]]:
    top = [(t.token, t.logprob) for t in entry.top_logprobs or ()]
    return entry.token, entry.logprob, top


def test_openai_chat_logprobs(oai: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to ten."}],
        "temperature": 0,
        "max_tokens": 6,
        "logprobs": True,
        "top_logprobs": 3,
    }
    completion = oai.chat.completions.create(**request)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    check_entries(entries, 3)
    assert completion.usage is not None and len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    assert (
        bytes(b for e in entries for b in e.bytes or ()) == (choice.message.content or "").encode()
    )
    streamed = [
        entry
        for chunk in oai.chat.completions.create(**request, stream=True)
        for c in chunk.choices
        if c.logprobs is not None
        for entry in c.logprobs.content or ()
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = oai.chat.completions.create(**{**request, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_openai_top_logprobs_without_logprobs_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="top_logprobs") as raised:
        oai.chat.completions.create(model=MODEL, messages=[MESSAGE], max_tokens=2, top_logprobs=2)
    assert raised.value.body["param"] == "top_logprobs"  # type: ignore[index]


def test_openai_completion_logprobs(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=5, temperature=0, logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None
    tokens = choice.logprobs.tokens or []
    assert "".join(tokens) == choice.text and len(tokens) == 5
    assert choice.logprobs.text_offset == [len("".join(tokens[:i])) for i in range(len(tokens))]
    for token, logprob, top in zip(
        tokens,
        choice.logprobs.token_logprobs or [],
        choice.logprobs.top_logprobs or [],
        strict=True,
    ):
        assert len(top) == 2 and top[token] == logprob == max(top.values())


def test_ollama_logprobs_streamed_and_not(client: ollama.Client) -> None:
    answer = client.generate(
        model=MODEL, prompt="Count to ten.", options=GREEDY, logprobs=True, top_logprobs=2
    )
    assert answer.logprobs is not None
    check_entries(list(answer.logprobs), 2)
    assert "".join(e.token for e in answer.logprobs) == answer.response
    streamed = [
        e
        for chunk in client.generate(
            model=MODEL,
            prompt="Count to ten.",
            options=GREEDY,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
        for e in chunk.logprobs or ()
    ]
    assert [(e.token, e.logprob) for e in streamed] == [
        (e.token, e.logprob) for e in answer.logprobs
    ]
    chat = client.chat(
        model=MODEL, messages=[MESSAGE], options=GREEDY, logprobs=True, top_logprobs=1
    )
    assert chat.logprobs is not None
    check_entries(list(chat.logprobs), 1)
    assert "".join(e.token for e in chat.logprobs) == chat.message.content
    with pytest.raises(ollama.ResponseError, match="top_logprobs"):
        client.generate(model=MODEL, prompt="Hi", options=GREEDY, top_logprobs=2)


def test_ollama_generate_returns_and_takes_context(client: ollama.Client) -> None:
    first = client.generate(model=MODEL, prompt="Name a colour.", options=GREEDY)
    context = list(first.context or [])
    assert len(context) == (first.prompt_eval_count or 0) + (first.eval_count or 0)
    second = client.generate(model=MODEL, prompt="Another one.", context=context, options=GREEDY)
    assert list(second.context or [])[: len(context)] == context
    assert (second.prompt_eval_count or 0) > len(context)
    streamed = list(
        client.generate(
            model=MODEL, prompt="Another one.", context=context, options=GREEDY, stream=True
        )
    )
    assert streamed[-1].context == second.context
    with pytest.raises(ollama.ResponseError, match="not in the model's vocabulary"):
        client.generate(model=MODEL, prompt="Hi", context=[2, 10**9], options=GREEDY)


# -- thinking ------------------------------------------------------------------------------------

# Gemma's turns, and a reasoning block the template opens itself: "<think>" and the level when
# thinking, an empty block when not. (It shows earlier reasoning, so it supports thinking.)
THINKING_TEMPLATE = (
    "{{- range .Messages }}<start_of_turn>"
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
    "{{ if .Think }}<think>{{ .ThinkLevel }}\n{{ else }}<think></think>{{ end }}"
)
QUESTION = "Why is the sky blue?"
THINK_GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture
def thinker(client: ollama.Client) -> Iterator[str]:
    name = f"thinker-{secrets.token_hex(3)}"
    client.create(model=name, from_=MODEL, template=THINKING_TEMPLATE)
    try:
        yield name
    finally:
        client.delete(name)


def raw_answer(client: ollama.Client, opening: str) -> str:
    prompt = f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n{opening}"
    return client.generate(model=MODEL, prompt=prompt, raw=True, options=THINK_GREEDY).response


def expected_split(raw: str) -> tuple[str, str]:
    thinking, _, content = raw.partition("</think>")
    return thinking, content


def test_think_levels_reach_the_template_and_reasoning_is_split(
    client: ollama.Client, oai: openai.OpenAI, thinker: str
) -> None:
    thinking, content = expected_split(raw_answer(client, "<think>high\n"))
    assert thinking
    ask = [{"role": "user", "content": QUESTION}]
    answer = client.chat(model=thinker, messages=ask, think="high", options=THINK_GREEDY)
    assert (answer.message.thinking, answer.message.content) == (thinking, content)
    chunks = list(
        client.chat(model=thinker, messages=ask, think="high", options=THINK_GREEDY, stream=True)
    )
    assert "".join(c.message.thinking or "" for c in chunks) == thinking
    assert "".join(c.message.content for c in chunks) == content
    completion = oai.chat.completions.create(
        model=thinker, messages=ask, reasoning_effort="high", temperature=0, max_tokens=12
    )
    message = completion.choices[0].message
    assert (getattr(message, "reasoning_content", None), message.content) == (thinking, content)
    streamed = list(
        oai.chat.completions.create(
            model=thinker,
            messages=ask,
            reasoning_effort="high",
            temperature=0,
            max_tokens=12,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == thinking


def test_generate_passes_think_and_hides_reasoning_when_it_is_off(
    client: ollama.Client, thinker: str
) -> None:
    thinking, content = expected_split(raw_answer(client, "<think>\n"))
    answer = client.generate(model=thinker, prompt=QUESTION, think=True, options=THINK_GREEDY)
    assert (answer.thinking, answer.response) == (thinking, content)
    off = raw_answer(client, "<think></think>")
    plain = client.generate(model=thinker, prompt=QUESTION, think=False, options=THINK_GREEDY)
    # Whatever reasoning the model still writes is not shown; the rest is the answer.
    assert plain.thinking is None
    assert plain.response == re.sub(r"<think>.*?(</think>|$)", "", off, flags=re.DOTALL)
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        client.generate(model=MODEL, prompt=QUESTION, think="low", options=THINK_GREEDY)


def test_openai_fields_not_implemented_are_refused_by_name(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="logit_bias") as raised:
        oai.chat.completions.create(
            model=MODEL, messages=[MESSAGE], max_tokens=2, logit_bias={"123": 5}
        )
    assert raised.value.body["param"] == "logit_bias"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="suffix"):
        oai.completions.create(model=MODEL, prompt="def f(", suffix="\n", max_tokens=2)


def test_errors_name_the_field_not_the_validator(
    client: ollama.Client, runtime_server: RunningServer
) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model=MODEL, prompt="Hi", options={"temperature": "hot"})
    assert raised.value.error == "invalid option 'temperature': expected a number"
    response = httpx.post(
        runtime_server.base_url + "/api/chat",
        json={"model": MODEL, "messages": [MESSAGE], "keep_alive": [5]},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("invalid request: keep_alive: expected ")
    assert ".int" not in error and ".str" not in error

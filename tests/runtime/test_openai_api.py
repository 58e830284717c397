"""The OpenAI API under /v1, driven by the official ``openai`` client against the real model."""

from __future__ import annotations

import base64
import json
import math
import struct
import uuid
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
PERSON_SCHEMA = {
    "type": "object",
    # Bounded, so that a base model's rambling still closes the object in a few tokens.
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture
def client(runtime_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=runtime_server.openai_url, api_key="unused") as client:
        yield client


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 8
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_usage_reports_the_prompt_tokens_a_slots_cache_held(client: openai.OpenAI) -> None:
    # A conversation's next turn: its history's whole chunks come from the slot's cache (the
    # answer's too, warmed while the slot idled), and usage says how many, as OpenAI reports
    # its prompt caching. A system prompt no request sent before is all evaluated.
    system = f"You are assistant {uuid.uuid4().hex}. " + "Answer briefly and kindly. " * 30
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Name a colour."},
    ]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "Name another."},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    # Whole 64-token chunks, at least the system prompt's, and never the whole prompt.
    assert cached % 64 == 0 and first.usage.prompt_tokens // 64 * 64 <= cached
    assert cached < second.usage.prompt_tokens


def test_chat_completion_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "length" and all(f is None for f in finish[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_sse_wire_format_ends_with_done(runtime_server: RunningServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": True,
    }
    response = httpx.post(runtime_server.openai_url + "/chat/completions", json=body, timeout=60)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert json.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_response_format_json_schema_validates(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA},
        },
        temperature=0,
        max_tokens=64,
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON_SCHEMA)


def test_response_format_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=48,
    )
    content = completion.choices[0].message.content or ""
    if completion.choices[0].finish_reason == "stop":
        json.loads(content)
    else:
        assert content.lstrip().startswith(("{", "["))


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    streamed = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_completions_stop(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=16, temperature=0)
        .choices[0]
        .text
    )
    stop = free[2:4]
    stopped = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=16, temperature=0, stop=stop
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == free[: free.index(stop)]


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in response.data] == [0, 1]
    for item in response.data:
        assert len(item.embedding) == 640
        assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, rel_tol=1e-4)
    assert response.usage.prompt_tokens > 0
    # base64 carries the same float32 vector.
    encoded = client.embeddings.create(model=MODEL, input="hello", encoding_format="base64")
    plain = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    raw = base64.b64decode(str(encoded.data[0].embedding))
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 640
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(decoded, plain.data[0].embedding, strict=True)
    )


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model:latest")


def test_errors_have_openai_shape(client: openai.OpenAI, runtime_server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="missing:1b", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "model 'missing:1b' not found" in str(info.value)
    raw = httpx.post(
        runtime_server.openai_url + "/chat/completions", json={"model": MODEL, "messages": []}
    )
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=2
        )

"""The Ollama native API, driven by the official ``ollama`` client against the real model."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 12, "seed": 7}
PERSON_SCHEMA = {
    "type": "object",
    # Bounded, so that a base model's rambling still closes the object in a few tokens.
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture
def client(runtime_server: RunningServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=runtime_server.base_url) as client:
        yield client


def assert_final_fields(final: Any) -> None:
    assert final.done is True
    assert final.done_reason in ("stop", "length")
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, field), int)
    assert final.prompt_eval_count > 0
    # Durations are nanoseconds: a generation of a few tokens takes well over a microsecond.
    assert final.total_duration > 1_000_000
    assert final.total_duration >= final.eval_duration


def test_root_and_version(runtime_server: RunningServer) -> None:
    assert httpx.get(runtime_server.base_url + "/").text == "Ollama is running"
    version = httpx.get(runtime_server.base_url + "/api/version").json()
    assert isinstance(version["version"], str) and version["version"]


def test_generate_streams_ndjson_and_ends_with_stats(client: ollama.Client) -> None:
    chunks = list(client.generate(model=MODEL, prompt="The sky is", options=GREEDY, stream=True))
    assert len(chunks) >= 2
    assert all(not c.done for c in chunks[:-1])
    final = chunks[-1]
    assert_final_fields(final)
    assert final.response == ""
    assert final.eval_count == len(chunks) - 1 or final.done_reason == "stop"
    assert final.done_reason == "length" and final.eval_count == GREEDY["num_predict"]


def test_generate_raw_http_is_ndjson(runtime_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "One, two,", "options": {**GREEDY, "num_predict": 3}}
    response = httpx.post(runtime_server.base_url + "/api/generate", json=body, timeout=60)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 3


def test_generate_not_streamed_is_one_object_and_greedy_is_repeatable(
    client: ollama.Client,
) -> None:
    first = client.generate(model=MODEL, prompt="The capital of France", options=GREEDY)
    second = client.generate(model=MODEL, prompt="The capital of France", options=GREEDY)
    assert_final_fields(first)
    assert first.response and first.response == second.response
    assert first.eval_count == GREEDY["num_predict"]


def test_stop_string_ends_generation_before_it(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 24}
    free = client.generate(model=MODEL, prompt="Count: 1, 2, 3,", options=options, raw=True)
    text = free.response
    assert len(text) > 6
    stop = text[3:6]
    stopped = client.generate(
        model=MODEL, prompt="Count: 1, 2, 3,", options={**options, "stop": [stop]}, raw=True
    )
    assert stopped.done_reason == "stop"
    assert stopped.response == text[: text.index(stop)]
    assert stop not in stopped.response


def test_format_json_schema_output_validates(client: ollama.Client) -> None:
    response = client.generate(
        model=MODEL,
        prompt="A person as JSON:",
        format=PERSON_SCHEMA,
        options={"temperature": 0, "num_predict": 64},
    )
    assert response.done_reason == "stop"
    jsonschema.validate(json.loads(response.response), PERSON_SCHEMA)


def test_format_json_is_json(client: ollama.Client) -> None:
    response = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply in JSON."}],
        format="json",
        options={"temperature": 0, "num_predict": 48},
    )
    if response.done_reason == "stop":
        json.loads(response.message.content)
    else:  # Ran out of tokens mid-object: what came is still a JSON prefix.
        assert response.message.content.lstrip().startswith(("{", "["))


def test_chat_streams_assistant_messages(client: ollama.Client) -> None:
    chunks = list(
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            options=GREEDY,
            stream=True,
        )
    )
    assert all(c.message.role == "assistant" for c in chunks)
    assert_final_fields(chunks[-1])
    assert "".join(c.message.content or "" for c in chunks)


def test_chat_with_history_and_system_not_streamed(client: ollama.Client) -> None:
    response = client.chat(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."},
        ],
        options=GREEDY,
    )
    assert_final_fields(response)
    assert response.message.role == "assistant"
    # The Gemma template's turn marker is a stop: a turn never runs into the next one.
    assert "<start_of_turn>" not in (response.message.content or "")


def test_system_template_and_raw_change_the_prompt(client: ollama.Client) -> None:
    plain = client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1})
    with_system = client.generate(
        model=MODEL,
        prompt="Hi",
        system="You are a pirate who talks a lot.",
        options={**GREEDY, "num_predict": 1},
    )
    raw = client.generate(model=MODEL, prompt="Hi", raw=True, options={**GREEDY, "num_predict": 1})
    custom = client.generate(
        model=MODEL,
        prompt="Hi",
        template="Q: {{ .Prompt }}\nA:",
        options={**GREEDY, "num_predict": 1},
    )
    counts = {
        plain.prompt_eval_count,
        with_system.prompt_eval_count,
        raw.prompt_eval_count,
        custom.prompt_eval_count,
    }
    assert len(counts) == 4
    assert raw.prompt_eval_count < custom.prompt_eval_count < plain.prompt_eval_count


def test_think_is_refused_for_a_model_without_thinking(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], think=True)
    assert info.value.status_code == 400
    assert "does not support thinking" in info.value.error
    # think=false is always accepted.
    ok = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        think=False,
        options={**GREEDY, "num_predict": 2},
    )
    assert ok.done


def test_images_are_refused_for_a_model_without_vision(client: ollama.Client) -> None:
    pixel = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5E"
        "rkJggg=="
    )
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="What is this?", images=[pixel])
    assert info.value.status_code == 400
    assert "images" in info.value.error


def test_embed_is_l2_normalized(client: ollama.Client) -> None:
    response = client.embed(model=MODEL, input=["hello world", "a cat sat"])
    assert len(response.embeddings) == 2
    for vector in response.embeddings:
        assert len(vector) == 640
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert response.embeddings[0] != response.embeddings[1]
    assert response.prompt_eval_count > 0
    single = client.embed(model=MODEL, input="hello world", dimensions=64)
    assert len(single.embeddings[0]) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in single.embeddings[0])), 1.0, rel_tol=1e-4)


def test_legacy_embeddings_are_not_normalized(client: ollama.Client) -> None:
    vector = client.embeddings(model=MODEL, prompt="hello world").embedding
    assert len(vector) == 640
    assert not math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)


def test_tags_show_and_ps(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1})
    tags = client.list()
    entry = next(m for m in tags.models if m.model == MODEL)
    assert entry.details.family == "gemma3"
    assert entry.details.quantization_level == "Q4_K_M"
    assert entry.details.parameter_size == "270M"
    assert entry.size > 250_000_000 and len(entry.digest) == 64
    shown = client.show(MODEL)
    assert "<start_of_turn>" in (shown.template or "")
    assert "completion" in (shown.capabilities or [])
    assert (shown.modelinfo or {})["general.architecture"] == "gemma3"
    assert 'stop                           "<end_of_turn>"' in (shown.parameters or "")
    running = client.ps()
    loaded = next(m for m in running.models if m.model == MODEL)
    assert loaded.size_vram == 0  # this machine has no GPU
    assert loaded.size and loaded.size >= entry.size
    assert loaded.context_length == 2048
    assert loaded.expires_at is not None


def test_options_layer_over_model_params(client: ollama.Client) -> None:
    # num_predict from the request wins; stop from the model's params layer still applies.
    response = client.generate(
        model=MODEL, prompt="Hi", options={"temperature": 0, "num_predict": 3}
    )
    assert response.eval_count <= 3


def test_keep_alive_load_and_unload_with_empty_prompt(client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL, prompt="", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    entry = next(m for m in client.ps().models if m.model == MODEL)
    assert entry.expires_at is not None
    unloaded = client.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert all(m.model != MODEL for m in client.ps().models)
    # A chat with no messages loads it again.
    again = client.chat(model=MODEL, messages=[], keep_alive=-1)
    assert again.done_reason == "load"
    forever = next(m for m in client.ps().models if m.model == MODEL)
    assert forever.expires_at is not None and forever.expires_at.year > 2200


def test_keep_alive_zero_unloads_after_the_request(client: ollama.Client) -> None:
    response = client.generate(
        model=MODEL, prompt="Hi", keep_alive=0, options={**GREEDY, "num_predict": 2}
    )
    assert response.done
    deadline = time.monotonic() + 10
    while any(m.model == MODEL for m in client.ps().models):
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.05)
    client.generate(model=MODEL, prompt="", keep_alive="5m")  # leave it loaded for others

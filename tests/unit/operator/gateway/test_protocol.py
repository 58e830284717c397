"""Model extraction, streaming defaults, error shapes and heartbeat bytes of both APIs."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from corral_operator.gateway.protocol import (
    ROUTED,
    Api,
    BadRequestError,
    error_body,
    heartbeat,
    inband_error,
    model_not_found,
    normalize_model_name,
    request_facts,
    unload_answer,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("path", "body", "model", "stream"),
    [
        ("/api/generate", {"model": "gemma3:270m", "prompt": "hi"}, "gemma3:270m", True),
        ("/api/generate", {"model": "gemma3", "stream": False}, "gemma3", False),
        ("/api/chat", {"model": "m", "messages": []}, "m", True),
        ("/api/chat", {"model": "m", "stream": False}, "m", False),
        ("/api/embed", {"model": "e", "input": "x", "stream": True}, "e", False),
        ("/api/embeddings", {"model": "e", "prompt": "x"}, "e", False),
        ("/api/show", {"name": "legacy:1b"}, "legacy:1b", False),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "m", False),
        ("/v1/chat/completions", {"model": "m", "stream": True}, "m", True),
        ("/v1/completions", {"model": " m ", "prompt": "x", "stream": True}, "m", True),
        ("/v1/embeddings", {"model": "e", "input": ["a"]}, "e", False),
    ],
)
def test_request_facts_per_endpoint(
    path: str, body: dict[str, object], model: str, stream: bool
) -> None:
    facts = request_facts(ROUTED[path], json.dumps(body).encode())
    assert facts.model == model
    assert facts.stream is stream


def test_keep_alive_is_read_from_ollama_requests_only() -> None:
    body = json.dumps({"model": "m", "keep_alive": "10m"}).encode()
    assert request_facts(ROUTED["/api/chat"], body).keep_alive == "10m"
    assert request_facts(ROUTED["/v1/chat/completions"], body).keep_alive is None


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1]", b'{"prompt": "x"}', b'{"model": ""}', b'{"model": 3}']
)
def test_unroutable_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequestError):
        request_facts(ROUTED["/api/generate"], body)


def test_openai_requests_do_not_fall_back_to_name() -> None:
    with pytest.raises(BadRequestError):
        request_facts(ROUTED["/v1/chat/completions"], b'{"name": "m"}')


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("gemma3:270m", "gemma3:270m"),
        ("Gemma3:270M", "gemma3:270m"),
        ("gemma3", "gemma3:latest"),
        ("library/gemma3:1b", "gemma3:1b"),
        ("registry.ollama.ai/library/gemma3", "gemma3:latest"),
        ("hf.co/org/repo:q4", "hf.co/org/repo:q4"),
        ("localhost:5000/ns/model", "localhost:5000/ns/model:latest"),
    ],
)
def test_normalize_model_name(name: str, key: str) -> None:
    assert normalize_model_name(name) == key


def test_not_found_in_each_api_shape() -> None:
    assert model_not_found(Api.OLLAMA, "x:1") == {"error": "model 'x:1' not found"}
    openai = model_not_found(Api.OPENAI, "x:1")["error"]
    assert openai["type"] == "not_found_error"
    assert openai["code"] == "model_not_found"
    assert "x:1" in openai["message"]


def test_error_types_follow_status() -> None:
    assert error_body(Api.OPENAI, 400, "bad")["error"]["type"] == "invalid_request_error"
    assert error_body(Api.OPENAI, 503, "busy")["error"]["type"] == "api_error"
    assert error_body(Api.OLLAMA, 503, "busy") == {"error": "busy"}


def test_chat_heartbeat_is_an_empty_assistant_chunk() -> None:
    line = heartbeat(ROUTED["/api/chat"], "gemma3:270m", NOW)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "model": "gemma3:270m",
        "created_at": "2025-01-02T03:04:05Z",
        "message": {"role": "assistant", "content": ""},
        "done": False,
    }


def test_generate_heartbeat_has_an_empty_response() -> None:
    chunk = json.loads(heartbeat(ROUTED["/api/generate"], "m", NOW))
    assert chunk["response"] == ""
    assert chunk["done"] is False
    assert "message" not in chunk


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_sse_heartbeat_is_a_comment(path: str) -> None:
    assert heartbeat(ROUTED[path], "m", NOW) == b": keep-alive\n\n"


def test_inband_errors() -> None:
    assert json.loads(inband_error(Api.OLLAMA, "boom")) == {"error": "boom"}
    event = inband_error(Api.OPENAI, "boom")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: ") :])["error"]["message"] == "boom"


@pytest.mark.parametrize(
    ("path", "body", "unload"),
    [
        ("/api/generate", {"model": "m", "keep_alive": 0}, True),
        ("/api/generate", {"model": "m", "keep_alive": "0s", "prompt": ""}, True),
        ("/api/generate", {"model": "m", "keep_alive": "0"}, True),
        ("/api/chat", {"model": "m", "keep_alive": 0, "messages": []}, True),
        ("/api/chat", {"model": "m", "keep_alive": "0m"}, True),
        # Something to generate first: an answer, then the unload (the pod's business).
        ("/api/generate", {"model": "m", "keep_alive": 0, "prompt": "hi"}, False),
        ("/api/generate", {"model": "m", "keep_alive": 0, "suffix": "x"}, False),
        ("/api/chat", {"model": "m", "keep_alive": 0, "messages": [{"role": "user"}]}, False),
        # A load, not an unload.
        ("/api/generate", {"model": "m"}, False),
        ("/api/generate", {"model": "m", "keep_alive": -1}, False),
        ("/api/generate", {"model": "m", "keep_alive": "5m"}, False),
        ("/api/generate", {"model": "m", "keep_alive": "soon"}, False),
        # No such request in the OpenAI API or for embeddings.
        ("/v1/chat/completions", {"model": "m", "keep_alive": 0}, False),
        ("/api/embed", {"model": "m", "keep_alive": 0}, False),
    ],
)
def test_an_unload_is_keep_alive_zero_with_nothing_to_generate(
    path: str, body: dict[str, object], unload: bool
) -> None:
    assert request_facts(ROUTED[path], json.dumps(body).encode()).unload is unload


def test_the_unload_answer_is_the_runtimes_shape() -> None:
    assert unload_answer(ROUTED["/api/generate"], "gemma3:270m", NOW) == {
        "model": "gemma3:270m",
        "created_at": "2025-01-02T03:04:05Z",
        "response": "",
        "done": True,
        "done_reason": "unload",
    }
    chat = unload_answer(ROUTED["/api/chat"], "gemma3:270m", NOW)
    assert chat["message"] == {"role": "assistant", "content": ""}
    assert (chat["done"], chat["done_reason"]) == (True, "unload") and "response" not in chat

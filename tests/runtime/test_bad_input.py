"""Bad input gets a clear 4xx in the API's own shape, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
SMALL = {"temperature": 0, "num_predict": 2}


@pytest.fixture
def http(runtime_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as client:
        yield client
        # Whatever the test sent, the server still answers a real request afterwards.
        after = client.post(
            "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": SMALL},
        )
        assert after.status_code == 200 and after.json()["done"] is True


def ollama_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def test_malformed_json(http: httpx.Client) -> None:
    for path in ("/api/generate", "/api/chat", "/api/embed"):
        response = http.post(path, content=b'{"model": "gemma3:270m", "prompt": ')
        assert "invalid JSON" in ollama_error(response, 400)
    response = http.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_and_unknown_model(http: httpx.Client) -> None:
    assert ollama_error(http.post("/api/generate", json={"prompt": "Hi"}), 400) == (
        "model is required"
    )
    assert (
        ollama_error(
            http.post(
                "/api/chat",
                json={"model": "nope:1b", "messages": [{"role": "user", "content": "Hi"}]},
            ),
            404,
        )
        == "model 'nope:1b' not found"
    )
    assert ollama_error(http.post("/api/show", json={"model": "nope"}), 404) == (
        "model 'nope:latest' not found"
    )
    assert ollama_error(http.post("/api/embed", json={"model": "nope", "input": "x"}), 404)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        "a/b/c/d",
        "x:../../y",
        "/etc/passwd",
        "name with space",
        "ok/../../../x",
        "%2e%2e/x",
    ],
)
def test_path_traversal_names_are_rejected(http: httpx.Client, name: str) -> None:
    for path, body in (
        ("/api/generate", {"model": name, "prompt": "Hi"}),
        ("/api/show", {"model": name}),
        ("/api/embed", {"model": name, "input": "x"}),
    ):
        response = http.post(path, json=body)
        assert response.status_code in (400, 404), (path, response.text)
        assert "error" in response.json()
    response = http.get(f"/v1/models/{name}")
    assert response.status_code in (400, 404)


def test_prompt_longer_than_the_context(http: httpx.Client) -> None:
    prompt = "word " * 3000  # well over num_ctx 2048 tokens
    message = ollama_error(
        http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "stream": True}), 400
    )
    assert "context length (2048 tokens)" in message
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
    )
    assert response.status_code == 400
    assert "2048" in response.json()["error"]["message"]
    message = ollama_error(
        http.post("/api/embed", json={"model": MODEL, "input": prompt, "truncate": False}), 400
    )
    assert "2048" in message
    truncated = http.post("/api/embed", json={"model": MODEL, "input": prompt})
    assert truncated.status_code == 200 and truncated.json()["prompt_eval_count"] == 2048


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"num_predict": 1.5}, "num_predict"),
        ({"top_p": 3}, "top_p"),
        ({"stop": 5}, "stop"),
        ({"num_ctx": 0}, "num_ctx"),
    ],
)
def test_invalid_options(http: httpx.Client, options: dict[str, Any], key: str) -> None:
    message = ollama_error(
        http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "options": options}), 400
    )
    assert key in message


def test_unknown_options_are_ignored(http: httpx.Client) -> None:
    response = http.post(
        "/api/generate",
        json={
            "model": MODEL,
            "prompt": "Hi",
            "stream": False,
            "options": {**SMALL, "not_an_option": 1},
        },
    )
    assert response.status_code == 200


@pytest.mark.parametrize("keep_alive", ["soon", "10 minutes", "5x", True, ""])
def test_bad_keep_alive(http: httpx.Client, keep_alive: Any) -> None:
    response = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "keep_alive": keep_alive, "options": SMALL},
    )
    assert response.status_code == 400, response.text


def test_bad_format_and_raw_conflicts(http: httpx.Client) -> None:
    assert "format" in ollama_error(
        http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "format": "yaml"}), 400
    )
    assert "raw" in ollama_error(
        http.post(
            "/api/generate", json={"model": MODEL, "prompt": "Hi", "raw": True, "system": "x"}
        ),
        400,
    )
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
    )
    assert response.status_code == 400


def test_wrong_field_types(http: httpx.Client) -> None:
    assert ollama_error(http.post("/api/chat", json={"model": MODEL, "messages": "hello"}), 400)
    assert ollama_error(
        http.post("/api/generate", json={"model": MODEL, "prompt": ["a", "b"]}), 400
    )
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 9},
    )
    assert response.status_code == 400


def test_unknown_path_is_404(http: httpx.Client) -> None:
    assert http.get("/api/nothing").status_code == 404
    assert http.post("/v1/nothing", json={}).json()["error"]["type"] == "not_found_error"


def test_oversized_bodies_are_413(model_store: Any) -> None:
    settings = settings_for(model_store.root, max_body_bytes=64 * 1024)
    with (
        serve(settings, model_store) as server,
        httpx.Client(base_url=server.base_url, timeout=60) as client,
    ):
        big = {"model": MODEL, "prompt": "x" * (128 * 1024)}
        response = client.post("/api/generate", json=big)
        assert response.status_code == 413
        assert "larger than" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as it streams
            yield b'{"model": "gemma3:270m", "prompt": "'
            for _ in range(16):
                yield b"y" * 8192
            yield b'"}'

        streamed = client.post("/api/generate", content=chunks())
        assert streamed.status_code == 413
        assert client.get("/healthz").status_code == 200

"""A slow or huge template is refused (4xx naming it) and never stalls the server while it runs.

The template is rendered in a worker thread that stops itself when its budget is spent; the
event loop keeps answering ``/healthz`` meanwhile (rendered on the loop, this template held
every other request for as long as it ran).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import ollama
import openai
import pytest

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
# About 10^12 iterations without a budget; the step budget stops it after 5 million.
NESTED = "{{ range 1000000 }}{{ range 1000000 }}{{ end }}{{ end }}"
NESTED_CHAT = "{{ range .Messages }}" + NESTED + "{{ .Content }}{{ end }}"


@pytest.fixture
def ollama_client(runtime_server: RunningServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=runtime_server.base_url) as client:
        client.generate(model=MODEL, prompt="")  # loaded: only the render is timed below
        yield client


def health_while(runtime_server: RunningServer, job: Callable[[], None]) -> list[float]:
    """Run ``job`` in a thread and ask /healthz every 50 ms until it ends; the latencies."""
    worker = threading.Thread(target=job)
    latencies: list[float] = []
    with httpx.Client(base_url=runtime_server.base_url, timeout=30) as http:
        worker.start()
        started = time.monotonic()
        while worker.is_alive() and time.monotonic() - started < 60:
            asked = time.monotonic()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - asked)
            time.sleep(0.05)
    worker.join(timeout=60)
    assert not worker.is_alive()
    return latencies


def test_a_requests_nested_loops_are_refused_and_health_answers_meanwhile(
    runtime_server: RunningServer, ollama_client: ollama.Client
) -> None:
    errors: list[ollama.ResponseError] = []

    def bad() -> None:
        try:
            ollama_client.generate(
                model=MODEL, prompt="hi", template=NESTED, options={"num_predict": 1}
            )
        except ollama.ResponseError as exc:
            errors.append(exc)

    latencies = health_while(runtime_server, bad)
    assert [e.status_code for e in errors] == [400]
    assert "the request's template exceeded its" in errors[0].error
    assert len(latencies) >= 3  # the render ran long enough to be watched
    assert max(latencies) < 1.0, latencies
    # The server is still serving.
    ok = ollama_client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    assert ok.done


def test_a_requests_broken_template_is_a_400_answered_at_once(
    runtime_server: RunningServer, ollama_client: ollama.Client
) -> None:
    # 200,000 unclosed "{{": the old lexer would have rescanned the rest from each one (hours).
    for template, message in (
        ("{{" * 200_000, "invalid template: unclosed action"),
        ("{{ $nope }}", "invalid template: undefined variable: $nope"),
    ):
        started = time.monotonic()
        with pytest.raises(ollama.ResponseError) as caught:
            ollama_client.generate(
                model=MODEL, prompt="hi", template=template, options={"num_predict": 1}
            )
        assert caught.value.status_code == 400
        assert message in caught.value.error
        assert time.monotonic() - started < 5.0


@pytest.fixture
def slow_template_model(runtime_server: RunningServer) -> Iterator[str]:
    name = "slow-template:latest"
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        created = http.post(
            "/api/create",
            json={"model": name, "from": MODEL, "template": NESTED_CHAT, "stream": False},
        )
        assert created.status_code == 200, created.text
        try:
            yield name
        finally:
            http.request("DELETE", "/api/delete", json={"model": name})


def test_a_models_slow_template_is_a_400_through_the_openai_api(
    runtime_server: RunningServer, slow_template_model: str
) -> None:
    errors: list[openai.BadRequestError] = []

    def bad() -> None:
        with openai.OpenAI(base_url=runtime_server.openai_url, api_key="unused") as client:
            try:
                client.chat.completions.create(
                    model=slow_template_model,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=1,
                )
            except openai.BadRequestError as exc:
                errors.append(exc)

    latencies = health_while(runtime_server, bad)
    assert len(errors) == 1
    assert "the model's chat template exceeded its" in errors[0].message
    assert max(latencies) < 1.0, latencies

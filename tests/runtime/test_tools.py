"""Tools and tool calls, with a tools-capable Ollama template layer (Go template) over the test
model. The base model cannot be relied on to call a tool by itself, so the calls are forced the
way clients force them: a JSON Schema ``format`` (Ollama) or ``tool_choice`` (OpenAI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import GEMMA_PARAMS, GEMMA_TEMPLATE
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

TOOLS_MODEL = "gemma3-tools:270m"
TOOLS_TEMPLATE = """{{- if .Tools }}<start_of_turn>user
You may call these functions; to call one, reply with JSON {"name": ..., "arguments": {...}}.
{{ range .Tools }}{{ json . }}
{{ end }}<end_of_turn>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "assistant" }}<start_of_turn>model
{{ if .ToolCalls }}{{ range .ToolCalls }}{{ json .Function }}{{ end }}
{{- else }}{{ .Content }}{{ end }}
{{- if not $last }}<end_of_turn>
{{ end }}
{{- else }}<start_of_turn>user
{{ if eq .Role "tool" }}Result: {{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- end }}
{{- end }}"""

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
CALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER_PARAMETERS},
    "required": ["name", "arguments"],
}


@pytest.fixture(scope="module")
def tools_server(
    tmp_path_factory: pytest.TempPathFactory, test_model_path: Path
) -> Iterator[RunningServer]:
    store = ModelStore(tmp_path_factory.mktemp("tools-store"))
    store.create_model(TOOLS_MODEL, test_model_path, template=TOOLS_TEMPLATE, params=GEMMA_PARAMS)
    store.create_model("gemma3:270m", test_model_path, template=GEMMA_TEMPLATE, params=GEMMA_PARAMS)
    with serve(settings_for(store.root), store) as server:
        yield server


def test_ollama_chat_returns_tool_calls(tools_server: RunningServer) -> None:
    with ollama.Client(host=tools_server.base_url) as client:
        response = client.chat(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER_TOOL],
            format=CALL_SCHEMA,
            options={"temperature": 0, "num_predict": 48},
        )
        calls = response.message.tool_calls or []
        assert len(calls) == 1
        assert calls[0].function.name == "get_weather"
        assert calls[0].function.arguments["city"] in ("Paris", "Oslo")
        assert response.message.content == ""
        # The call and its result go back into the conversation and render.
        follow_up = client.chat(
            model=TOOLS_MODEL,
            messages=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
            ],
            tools=[WEATHER_TOOL],
            options={"temperature": 0, "num_predict": 8},
        )
        assert follow_up.done


def test_ollama_streamed_tool_calls(tools_server: RunningServer) -> None:
    with ollama.Client(host=tools_server.base_url) as client:
        chunks = list(
            client.chat(
                model=TOOLS_MODEL,
                messages=[{"role": "user", "content": "Weather in Oslo?"}],
                tools=[WEATHER_TOOL],
                format=CALL_SCHEMA,
                stream=True,
                options={"temperature": 0, "num_predict": 48},
            )
        )
    calls = [c for chunk in chunks for c in chunk.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "".join(c.message.content or "" for c in chunks) == ""
    assert chunks[-1].done


def test_tools_need_a_template_that_supports_them(tools_server: RunningServer) -> None:
    with (
        ollama.Client(host=tools_server.base_url) as client,
        pytest.raises(ollama.ResponseError) as info,
    ):
        client.chat(
            model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL]
        )
    assert info.value.status_code == 400
    assert "does not support tools" in info.value.error


def test_openai_tool_choice_forces_a_call(tools_server: RunningServer) -> None:
    with openai.OpenAI(base_url=tools_server.openai_url, api_key="x") as client:
        completion = client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=48,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].type == "function"
        function = calls[0].function  # type: ignore[union-attr]
        assert function.name == "get_weather"
        assert json.loads(function.arguments)["city"] in ("Paris", "Oslo")
        assert calls[0].id

        stream = client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="required",
            temperature=0,
            max_tokens=48,
            stream=True,
        )
        chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed_calls = [t for d in deltas for t in d.tool_calls or []]
    assert [t.function.name for t in streamed_calls if t.function] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


TWO_CALLS_SCHEMA = {"type": "array", "items": CALL_SCHEMA, "minItems": 2, "maxItems": 2}


def test_streamed_calls_arrive_each_as_soon_as_it_is_complete(
    tools_server: RunningServer,
) -> None:
    """Two calls in one answer: the first reaches the client while the model still writes the
    second, in a chunk of its own; Ollama numbers them 0 and 1, OpenAI's deltas too."""
    request = {
        "model": TOOLS_MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris and in Oslo?"}],
        "tools": [WEATHER_TOOL],
    }
    with ollama.Client(host=tools_server.base_url) as client:
        chunks = list(
            client.chat(
                **request,
                format=TWO_CALLS_SCHEMA,
                stream=True,
                options={"temperature": 0, "num_predict": 96},
            )
        )
    carrying = [i for i, chunk in enumerate(chunks) if chunk.message.tool_calls]
    assert len(carrying) == 2, [c.message for c in chunks]
    first, second = (chunks[i].message.tool_calls or [] for i in carrying)
    assert [len(first), len(second)] == [1, 1]
    assert not chunks[carrying[1]].done and chunks[-1].done
    # On the wire, Ollama numbers each call within the answer (the client drops the index).
    body = {**request, "format": TWO_CALLS_SCHEMA, "options": {"temperature": 0, "num_predict": 96}}
    with httpx.stream("POST", f"{tools_server.base_url}/api/chat", json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    indexes = [
        c["function"]["index"] for line in lines for c in line["message"].get("tool_calls", [])
    ]
    assert indexes == [0, 1]

    with openai.OpenAI(base_url=tools_server.openai_url, api_key="x") as oai:
        stream = oai.chat.completions.create(
            model=TOOLS_MODEL,
            messages=request["messages"],  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            temperature=0,
            max_tokens=96,
            stream=True,
            extra_body={
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "calls", "schema": TWO_CALLS_SCHEMA},
                }
            },
        )
        events = list(stream)
    with_calls = [
        (i, call)
        for i, event in enumerate(events)
        if event.choices
        for call in event.choices[0].delta.tool_calls or []
    ]
    assert [call.index for _, call in with_calls] == [0, 1]
    assert with_calls[0][0] < with_calls[1][0]  # in chunks of their own
    assert all(
        call.id and call.function and call.function.name == "get_weather" for _, call in with_calls
    )
    assert events[-1].choices[0].finish_reason == "tool_calls"

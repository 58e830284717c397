"""Wire models converting to engine terms: Ollama's format, OpenAI's response_format and
tool_choice, errors in each API's shape."""

from __future__ import annotations

import pytest

from corral_runtime.api.errors import ApiError, as_api_error, error_body
from corral_runtime.api.ollama_protocol import GenerateRequest, parse_format
from corral_runtime.api.openai_protocol import ChatCompletionRequest
from corral_runtime.api.thinking import wants_thinking
from corral_runtime.engine.types import OutputFormat, QueueFullError
from corral_runtime.store.layout import ModelNotFoundError
from corral_runtime.store.names import InvalidNameError

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}


def test_ollama_format() -> None:
    assert parse_format(None) is None and parse_format("") is None
    assert parse_format("json") == OutputFormat(schema=None)
    assert parse_format(SCHEMA) == OutputFormat(schema=SCHEMA)
    for bad in ("yaml", 3, ["json"]):
        with pytest.raises(ApiError) as info:
            parse_format(bad)
        assert info.value.status == 400


def test_think_values() -> None:
    assert wants_thinking(True) and wants_thinking("high")
    assert not wants_thinking(False) and not wants_thinking(None)


def test_raw_excludes_template_and_system() -> None:
    GenerateRequest(model="m", prompt="x", raw=True).check()
    with pytest.raises(ApiError):
        GenerateRequest(model="m", prompt="x", raw=True, system="s").check()


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_openai_options() -> None:
    options = chat(max_tokens=5, stop="x", seed=3).engine_options()
    assert options.num_predict == 5 and options.stop == ["x"] and options.seed == 3
    assert options.temperature == 1.0  # OpenAI's default, not Ollama's
    assert chat(max_tokens=5, max_completion_tokens=7).engine_options().num_predict == 7
    with pytest.raises(ApiError):
        chat(n=3).engine_options()


def test_openai_response_format() -> None:
    assert chat(response_format={"type": "text"}).output_format() is None
    assert chat(response_format={"type": "json_object"}).output_format() == OutputFormat()
    fmt = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    ).output_format()
    assert fmt == OutputFormat(schema=SCHEMA)


def test_tool_choice_forces_a_call_grammar() -> None:
    forced = chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}})
    assert forced.output_format() == OutputFormat(
        schema={
            "type": "object",
            "properties": {"name": {"const": "f"}, "arguments": SCHEMA},
            "required": ["name", "arguments"],
        }
    )
    assert chat(tools=[TOOL], tool_choice="auto").output_format() is None
    assert chat(tools=[TOOL], tool_choice="none").tool_list() == []
    with pytest.raises(ApiError):
        chat(tools=[TOOL], tool_choice={"function": {"name": "g"}}).output_format()


def test_openai_content_parts_and_tool_messages() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "text", "text": "b"},
                        {"type": "image_url", "image_url": {"url": "data:x"}},
                    ],
                },
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
        }
    )
    user, assistant, tool = (m.to_chat() for m in request.messages)
    assert user.content == "ab" and user.images == ("data:x",)
    assert assistant.tool_calls[0].arguments == {"a": 1} and assistant.tool_calls[0].id == "c1"
    assert tool.tool_call_id == "c1"


def test_error_shapes() -> None:
    error = as_api_error(ModelNotFoundError("x:latest"))
    assert error.status == 404
    assert error_body("/api/chat", error) == {"error": "model 'x:latest' not found"}
    assert error_body("/v1/chat/completions", error)["error"]["type"] == "not_found_error"
    busy = as_api_error(QueueFullError())
    assert busy.status == 503 and busy.headers == {"Retry-After": "1"}
    assert as_api_error(InvalidNameError("bad")).status == 400
    assert as_api_error(KeyError("boom")).status == 500

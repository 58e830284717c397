"""Text in requests: strings that are no Unicode are found wherever they sit, and the wire
models refuse them (and unknown roles) with a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from corral_runtime.api.ollama_protocol import ChatRequest, GenerateRequest
from corral_runtime.api.openai_protocol import ChatCompletionRequest
from corral_runtime.api.text import first_invalid_text, printable

pytestmark = pytest.mark.unit

LONE = "\ud800"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("fine", None),
        ({"a": ["x", {"b": "y"}], "n": 1, "f": 1.5, "z": None}, None),
        (LONE, ""),
        ({"prompt": LONE}, "prompt"),
        ({"messages": [{"role": "user"}, {"content": f"a{LONE}b"}]}, "messages.1.content"),
        ({"format": {"properties": {LONE: {}}}}, "format.properties.\\ud800"),
        (["ok", ("fine", LONE)], "1.1"),
    ],
)
def test_the_first_invalid_string_is_found_with_its_path(value: Any, where: str | None) -> None:
    assert first_invalid_text(value) == where


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    value: Any = LONE
    for _ in range(50_000):
        value = [value]
    assert first_invalid_text(value) == ".".join(["0"] * 50_000)


def test_printable_escapes_what_utf8_cannot_encode() -> None:
    assert printable(f"a{LONE}") == "a\\ud800"
    printable(f"a{LONE}").encode("utf-8")


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (GenerateRequest, {"model": "m", "prompt": LONE}, "prompt"),
        (GenerateRequest, {"model": "m", "options": {"stop": ["x", LONE]}}, "options.stop.1"),
        (ChatRequest, {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
        (ChatCompletionRequest, {"model": "m", "messages": [], "stop": LONE}, "stop"),
    ],
)
def test_wire_models_refuse_invalid_text_naming_the_field(
    model: type[Any], body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    message = raised.value.errors()[0]["msg"]
    assert message.startswith(f"{field} is not valid Unicode text")
    message.encode("utf-8")


@pytest.mark.parametrize("role", ["", "wizard", "User", "developer"])
def test_ollama_refuses_unknown_roles(role: str) -> None:
    with pytest.raises(ValidationError, match="unknown role"):
        ChatRequest.model_validate({"messages": [{"role": role, "content": "x"}]})


def test_openai_reads_developer_as_system_and_function_as_tool() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "function", "name": "f", "content": "42"},
            ],
        }
    )
    chat = [m.to_chat() for m in request.messages]
    assert [m.role for m in chat] == ["system", "tool"]
    assert chat[1].tool_name == "f"
    with pytest.raises(ValidationError, match="unknown role"):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "", "content": "x"}]}
        )

"""What both wire protocols' chat requests share: a tool's function reads the same on either
API, and each API holds a message's role to its own list."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from corral_runtime.api.ollama_protocol import ChatRequest
from corral_runtime.api.openai_protocol import ChatCompletionRequest
from corral_runtime.templates.messages import Tool

pytestmark = pytest.mark.unit

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"name": "get_weather", "description": "The weather in a city", "parameters": SCHEMA}
HI = {"role": "user", "content": "hi"}


def ollama(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [HI], **fields})


def openai(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [HI], **fields})


def test_a_tool_reads_the_same_on_both_apis() -> None:
    tools = [{"type": "function", "function": WEATHER}, {"function": {"name": "now"}}]
    expected = [
        Tool(name="get_weather", description="The weather in a city", parameters=SCHEMA),
        Tool(name="now"),
    ]
    assert ollama(tools=tools).tool_list() == expected
    assert openai(tools=tools).tool_list() == expected


def test_each_api_knows_its_own_roles() -> None:
    developer = {"role": "developer", "content": "be brief"}
    assert openai(messages=[developer, HI]).messages[0].to_chat().role == "system"
    with pytest.raises(ValidationError, match="unknown role 'developer'"):
        ollama(messages=[developer, HI])
    for request in (ollama, openai):
        with pytest.raises(ValidationError, match="expected one of"):
            request(messages=[{"role": "narrator", "content": "x"}])

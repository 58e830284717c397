"""Recognising tool calls in model output, whole and streamed."""

from __future__ import annotations

import pytest

from corral_runtime.api.tool_calls import ToolCallBuffer, parse_tool_calls
from corral_runtime.templates.messages import ToolCall

pytestmark = pytest.mark.unit

NAMES = {"get_weather", "add"}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "parameters": {"city": "Paris"}} ',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
    ],
)
def test_one_call_in_many_spellings(text: str) -> None:
    assert parse_tool_calls(text, NAMES) == [ToolCall("get_weather", {"city": "Paris"})]


def test_several_calls() -> None:
    text = '[{"name": "add", "arguments": {"a": 1}}, {"name": "add", "arguments": {"a": 2}}]'
    assert parse_tool_calls(text, NAMES) == [ToolCall("add", {"a": 1}), ToolCall("add", {"a": 2})]
    text = (
        '<tool_call>{"name": "add", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": {"b": 1}}</tool_call>'
    )
    assert parse_tool_calls(text, NAMES) == [ToolCall("add", {}), ToolCall("add", {"b": 1})]


@pytest.mark.parametrize(
    "text",
    [
        "Hello there",
        '{"name": "unknown_tool", "arguments": {}}',
        '{"city": "Paris"}',
        '{"name": "add", "arguments": [1]}',
        '{"name": "add", "arguments": {}} and more',
        "",
        '{"name": "add", "arguments": "not json"}',
    ],
)
def test_ordinary_content_is_not_a_call(text: str) -> None:
    assert parse_tool_calls(text, NAMES) is None


def test_buffer_streams_content_at_once() -> None:
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed("Hel") == "Hel"
    assert buffer.feed('lo {"x"') == 'lo {"x"'
    assert buffer.finish() == ("", [])


def test_buffer_holds_a_call_until_the_end() -> None:
    buffer = ToolCallBuffer(NAMES)
    pieces = [" ", '{"name": "add", ', '"arguments": {"a": 1}}']
    assert [buffer.feed(p) for p in pieces] == ["", "", ""]
    assert buffer.finish() == ("", [ToolCall("add", {"a": 1})])


def test_buffer_releases_what_was_not_a_call() -> None:
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed("<tool") == ""
    assert buffer.feed("bar> is a tag") == "<toolbar> is a tag"
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed('{"just": "json"}') == ""
    assert buffer.finish() == ('{"just": "json"}', [])

"""Recognising tool calls in model output, whole and streamed: each call is given out as soon
as its JSON is complete; output that is not a call is content."""

from __future__ import annotations

import pytest

from corral_runtime.api.tool_calls import ToolCallBuffer, find_tool_calls
from corral_runtime.templates.messages import ToolCall

pytestmark = pytest.mark.unit

NAMES = {"get_weather", "add"}
PARIS = ToolCall("get_weather", {"city": "Paris"})


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "parameters": {"city": "Paris"}} ',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
    ],
)
def test_one_call_in_many_spellings(text: str) -> None:
    assert find_tool_calls(text, NAMES) == ([PARIS], "")


def test_several_calls() -> None:
    text = '[{"name": "add", "arguments": {"a": 1}}, {"name": "add", "arguments": {"a": 2}}]'
    calls = [ToolCall("add", {"a": 1}), ToolCall("add", {"a": 2})]
    assert find_tool_calls(text, NAMES) == (calls, "")
    text = (
        '<tool_call>{"name": "add", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": {"b": 1}}</tool_call>'
    )
    assert find_tool_calls(text, NAMES) == ([ToolCall("add", {}), ToolCall("add", {"b": 1})], "")


def test_braces_and_quotes_inside_strings_do_not_end_a_call() -> None:
    text = '{"name": "add", "arguments": {"s": "}{ \\" ]["}}'
    assert find_tool_calls(text, NAMES) == ([ToolCall("add", {"s": '}{ " ]['})], "")


@pytest.mark.parametrize(
    "text",
    [
        "Hello there",
        '{"name": "unknown_tool", "arguments": {}}',
        '{"city": "Paris"}',
        '{"name": "add", "arguments": [1]}',
        "",
        '{"name": "add", "arguments": "not json"}',
        '{"name": "add", "arguments": {}',  # never completed
        'Sure: {"name": "add", "arguments": {}}',  # content first: all of it is content
        "[1] is a footnote",
        "```python\nprint(1)\n```",
    ],
)
def test_ordinary_content_is_not_a_call(text: str) -> None:
    assert find_tool_calls(text, NAMES) == ([], text)


def test_text_after_a_call_is_content() -> None:
    text = '{"name": "add", "arguments": {"a": 1}} and more'
    assert find_tool_calls(text, NAMES) == ([ToolCall("add", {"a": 1})], " and more")


def test_buffer_streams_content_at_once() -> None:
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed("Hel") == ("Hel", [])
    assert buffer.feed('lo {"x"') == ('lo {"x"', [])
    assert buffer.finish() == ""


def test_buffer_gives_each_call_out_as_soon_as_it_is_complete() -> None:
    buffer = ToolCallBuffer(NAMES)
    pieces = [
        "<tool_",
        'call>\n{"name": "add", ',
        '"arguments": {"a": 1}}',
        "\n</tool_call>\n<tool_call>\n",
        '{"name": "get_weather", "arguments": {"city": "Par',
        'is"}}',
        "\n</tool_call>",
    ]
    assert [buffer.feed(p) for p in pieces] == [
        ("", []),
        ("", []),
        ("", [ToolCall("add", {"a": 1})]),
        ("", []),
        ("", []),
        ("", [PARIS]),
        ("", []),
    ]
    assert buffer.finish() == ""


def test_buffer_releases_what_was_not_a_call() -> None:
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed("<tool") == ("", [])
    assert buffer.feed("bar> is a tag") == ("<toolbar> is a tag", [])
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed('{"just": "json"}') == ('{"just": "json"}', [])
    assert buffer.finish() == ""
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed("``") == ("", [])
    assert buffer.feed("`j") == ("", [])  # may still be ```json
    assert buffer.feed("s\n") == ("```js\n", [])


def test_buffer_keeps_an_unfinished_call_as_content_at_the_end() -> None:
    buffer = ToolCallBuffer(NAMES)
    assert buffer.feed('{"name": "add", "arguments": {"a"') == ("", [])
    assert buffer.finish() == '{"name": "add", "arguments": {"a"'


def test_a_long_call_in_many_pieces_is_scanned_once() -> None:
    # One character at a time: the call completes on its last piece, and not before.
    text = '{"name": "add", "arguments": {"text": "' + "x" * 5000 + '"}}'
    buffer = ToolCallBuffer(NAMES)
    out = [buffer.feed(ch) for ch in text]
    assert all(step == ("", []) for step in out[:-1])
    assert out[-1] == ("", [ToolCall("add", {"text": "x" * 5000})])

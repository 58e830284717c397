"""A generation's answer as both APIs send it: reasoning split out (or hidden), content streamed
at once unless it may be a tool call, and the calls recognised once the answer is complete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from corral_runtime.api import ollama_protocol, openai_protocol
from corral_runtime.api.serving_answers import Answer, AnswerStream, Ending, whole_answer
from corral_runtime.api.thinking import ThinkingSplitter, ThinkValue
from corral_runtime.templates.messages import Tool, ToolCall

pytestmark = pytest.mark.unit

TOOLS = [Tool(name="add"), Tool(name="get_weather")]
ADD = '{"name": "add", "arguments": {"a": 1}}'
REASONED = ["<thi", "nk>wh", "y</th", "ink>ans", "wer"]  # "<think>why</think>answer"
CALLS = [ToolCall("add", {"a": 1}), ToolCall("get_weather", {"city": "Paris"}, id="call_7")]


@dataclass(slots=True)
class Written:
    """An answer the model wrote, piece by piece; ``thinks``: its template has reasoning."""

    chunks: list[str]
    thinks: bool = False

    async def pieces(self) -> AsyncIterator[str]:
        for piece in self.chunks:
            yield piece

    async def text(self) -> str:
        return "".join(self.chunks)

    def reasoning_splitter(self) -> ThinkingSplitter | None:
        return ThinkingSplitter() if self.thinks else None


async def streamed(
    written: Written, *, think: ThinkValue = None, tools: list[Tool] | None = None
) -> tuple[list[Answer], Ending]:
    stream = AnswerStream(written, think=think, tools=tools or [])
    steps = [step async for step in stream.steps()]
    return steps, stream.ending()


def sent(steps: list[Answer], ending: Ending) -> tuple[str, str]:
    """All the reasoning and all the content a client got, in order."""
    thinking = "".join(s.thinking for s in steps) + ending.thinking
    content = "".join(s.content for s in steps) + ending.content + ending.held
    return thinking, content


def calls_sent(steps: list[Answer], ending: Ending) -> list[ToolCall]:
    return [call for step in steps for call in step.tool_calls] + ending.tool_calls


class TestText:
    async def test_each_piece_passes_at_once(self) -> None:
        steps, ending = await streamed(Written(["Hel", "lo", " there"]))
        assert steps == [Answer(content="Hel"), Answer(content="lo"), Answer(content=" there")]
        assert ending == Ending()

    async def test_with_tools_offered_text_still_passes_at_once(self) -> None:
        steps, ending = await streamed(Written(["Hel", "lo {", "x}"]), tools=TOOLS)
        assert [s.content for s in steps] == ["Hel", "lo {", "x}"]
        assert ending == Ending()

    async def test_whole(self) -> None:
        answer = await whole_answer(Written(["Hel", "lo"]), think=None, tools=TOOLS)
        assert answer == Answer(content="Hello")


class TestThinking:
    async def test_split_across_pieces(self) -> None:
        steps, ending = await streamed(Written(REASONED, thinks=True))
        assert sent(steps, ending) == ("why", "answer")
        # Only what may begin a tag waits: the reasoning arrives before the answer starts.
        assert [s.thinking for s in steps] == ["", "wh", "y", "", ""]

    @pytest.mark.parametrize("think", [None, True, "high"])
    async def test_shown_unless_turned_off(self, think: ThinkValue) -> None:
        steps, ending = await streamed(Written(REASONED, thinks=True), think=think)
        assert sent(steps, ending) == ("why", "answer")
        answer = await whole_answer(Written(REASONED, thinks=True), think=think, tools=[])
        assert answer == Answer(thinking="why", content="answer")

    async def test_turned_off_it_is_hidden_and_still_not_content(self) -> None:
        steps, ending = await streamed(Written(REASONED, thinks=True), think=False)
        assert sent(steps, ending) == ("", "answer")
        answer = await whole_answer(Written(REASONED, thinks=True), think=False, tools=[])
        assert answer == Answer(content="answer")

    async def test_a_template_without_reasoning_keeps_the_tags_as_content(self) -> None:
        steps, ending = await streamed(Written(REASONED))
        assert sent(steps, ending) == ("", "<think>why</think>answer")

    async def test_what_the_splitter_held_at_the_end_keeps_its_place(self) -> None:
        # "<th" may have begun a tag: held by the splitter to the end, after the JSON that came
        # before it (content as soon as it was complete and no call).
        steps, ending = await streamed(Written(['{"just": "json"} <th'], thinks=True), tools=TOOLS)
        assert sent(steps, ending) == ("", '{"just": "json"} <th')
        assert [s.content for s in steps] == ['{"just": "json"} '] and ending.content == "<th"

    async def test_reasoning_then_a_call(self) -> None:
        pieces = ["<think>sum</think>", '{"name": "add",', ' "arguments": {"a": 1}}']
        answer = await whole_answer(Written(pieces, thinks=True), think=None, tools=TOOLS)
        assert answer == Answer(thinking="sum", tool_calls=[ToolCall("add", {"a": 1})])
        steps, ending = await streamed(Written(pieces, thinks=True), tools=TOOLS)
        assert sent(steps, ending) == ("sum", "")
        assert calls_sent(steps, ending) == [ToolCall("add", {"a": 1})]


class TestToolCalls:
    async def test_a_call_in_several_pieces_is_sent_once_with_the_piece_that_completes_it(
        self,
    ) -> None:
        # Held back while it streams (it might still turn out to be content), sent as soon as
        # its JSON is complete: never a partial call, never the call's JSON as content.
        steps, ending = await streamed(
            Written([" ", '{"name": "ad', 'd", "argum', 'ents": {"a": 1}}']), tools=TOOLS
        )
        assert steps == [
            Answer(),
            Answer(),
            Answer(),
            Answer(tool_calls=[ToolCall("add", {"a": 1})]),
        ]
        assert ending == Ending()

    async def test_two_calls_in_one_answer_each_as_soon_as_it_is_complete(self) -> None:
        pieces = [
            "<tool_call>",
            '{"name": "add", "arguments": {"a": 1}}',
            "</tool_call>\n<tool_call>",
            '{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        ]
        calls = [ToolCall("add", {"a": 1}), ToolCall("get_weather", {"city": "Paris"})]
        steps, ending = await streamed(Written(pieces), tools=TOOLS)
        assert [s.tool_calls for s in steps] == [[], calls[:1], [], calls[1:]]
        assert sent(steps, ending) == ("", "") and ending == Ending()
        assert await whole_answer(Written(pieces), think=None, tools=TOOLS) == Answer(
            tool_calls=calls
        )

    async def test_text_after_a_call_is_content_after_the_call(self) -> None:
        steps, ending = await streamed(Written([ADD, " and then", " some words"]), tools=TOOLS)
        assert calls_sent(steps, ending) == [ToolCall("add", {"a": 1})]
        assert sent(steps, ending) == ("", " and then some words")
        answer = await whole_answer(Written([ADD, " and then"]), think=None, tools=TOOLS)
        assert answer == Answer(content=" and then", tool_calls=[ToolCall("add", {"a": 1})])

    @pytest.mark.parametrize(
        "pieces",
        [
            pytest.param(['{"name": "add", ', '"arguments": {"a": 1'], id="unterminated call"),
            pytest.param(['{"name": "delete_all",', ' "arguments": {}}'], id="tool not offered"),
        ],
    )
    async def test_what_only_looked_like_a_call_is_content(self, pieces: list[str]) -> None:
        steps, ending = await streamed(Written(pieces), tools=TOOLS)
        assert calls_sent(steps, ending) == []
        assert sent(steps, ending) == ("", "".join(pieces))
        answer = await whole_answer(Written(pieces), think=None, tools=TOOLS)
        assert answer == Answer(content="".join(pieces))

    async def test_with_no_tools_offered_json_is_content_at_once(self) -> None:
        steps, ending = await streamed(Written([ADD]))
        assert steps == [Answer(content=ADD)] and ending == Ending()
        assert await whole_answer(Written([ADD]), think=None, tools=[]) == Answer(content=ADD)


class TestWireShapes:
    """The calls are the same for both APIs; how each sends them differs."""

    def test_ollama_sends_arguments_as_an_object_with_an_index(self) -> None:
        assert ollama_protocol.wire_tool_calls(CALLS) == [
            {"function": {"index": 0, "name": "add", "arguments": {"a": 1}}},
            {"function": {"index": 1, "name": "get_weather", "arguments": {"city": "Paris"}}},
        ]

    def test_openai_sends_arguments_as_json_text_with_an_id(self) -> None:
        first, second = openai_protocol.wire_tool_calls(CALLS)
        assert first["id"].startswith("call_") and first["id"] != second["id"]
        assert first["type"] == "function" and "index" not in first
        assert first["function"] == {"name": "add", "arguments": '{"a": 1}'}
        assert second["id"] == "call_7"
        assert second["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    def test_openai_chunks_number_the_calls(self) -> None:
        streamed_calls = openai_protocol.wire_tool_calls(CALLS, with_index=True)
        assert [c["index"] for c in streamed_calls] == [0, 1]

    @pytest.mark.parametrize(
        ("done_reason", "calls", "expected"),
        [("stop", False, "stop"), ("length", False, "length"), ("length", True, "tool_calls")],
    )
    def test_openai_finish_reason(self, done_reason: str, calls: bool, expected: str) -> None:
        assert openai_protocol.finish_reason(done_reason, calls) == expected

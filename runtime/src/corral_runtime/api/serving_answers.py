"""A generation's answer as both APIs send it: the reasoning split out (and left out when the
request's ``think`` is false), the content, and the tool calls recognised in it.

Whole answers are read at once (``whole_answer``). Streamed ones go through ``AnswerStream``,
the one loop that feeds each piece to the reasoning splitter and then to the tool-call buffer,
so that Ollama's NDJSON and OpenAI's server-sent events differ only in how they frame its steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from corral_runtime.api.thinking import (
    Split,
    ThinkingSplitter,
    ThinkValue,
    shows_thinking,
    split_answer,
)
from corral_runtime.api.tool_calls import ToolCallBuffer, find_tool_calls
from corral_runtime.templates.messages import Tool, ToolCall


class AnswerSource(Protocol):
    """What an answer is read from (a started ``Generation``): the text the model writes, and
    what splits its reasoning out. Nothing more, so that the answer's rules stand on their own
    (and are checked without a model)."""

    def pieces(self) -> AsyncIterator[str]: ...

    async def text(self) -> str: ...

    def reasoning_splitter(self) -> ThinkingSplitter | None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send: reasoning ("" when hidden), content, and the tool calls it made."""

    thinking: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ending:
    """What a streamed answer still holds once its last piece is in: the reasoning and content
    the splitter held back (and the calls that content completed), then what the tool-call
    buffer held (content that only looked like a call)."""

    thinking: str = ""
    content: str = ""
    held: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


async def whole_answer(generation: AnswerSource, *, think: ThinkValue, tools: list[Tool]) -> Answer:
    """The answer of a generation read to its end, decided as its stream is: the tool calls it
    opens with, then content (content that is all calls is only calls); with no tools offered it
    is all content."""
    split = split_answer(generation.reasoning_splitter(), await generation.text())
    calls, content = (
        find_tool_calls(split.content, {t.name for t in tools}) if tools else ([], split.content)
    )
    return Answer(
        thinking=split.thinking if shows_thinking(think) else "",
        content=content,
        tool_calls=calls,
    )


class AnswerStream:
    """A generation's answer step by step: iterate ``steps()`` (one per piece the model wrote),
    then take ``ending()``. Content that may be a tool call is held back until its JSON is
    complete, and then is a call of that step (or content, when it turns out none); everything
    else passes at once."""

    def __init__(self, generation: AnswerSource, *, think: ThinkValue, tools: list[Tool]) -> None:
        self._generation = generation
        self._splitter = generation.reasoning_splitter()
        self._buffer = ToolCallBuffer({t.name for t in tools}) if tools else None
        self._show_thinking = shows_thinking(think)

    async def steps(self) -> AsyncIterator[Answer]:
        """Per piece, the reasoning, content and tool calls it completes (any may be empty)."""
        async for piece in self._generation.pieces():
            split = (
                self._splitter.feed(piece) if self._splitter is not None else Split(content=piece)
            )
            content, calls = self._passed(split.content)
            yield Answer(thinking=self._shown(split.thinking), content=content, tool_calls=calls)

    def ending(self) -> Ending:
        rest = self._splitter.finish() if self._splitter is not None else Split()
        content, calls = self._passed(rest.content)
        held = self._buffer.finish() if self._buffer is not None else ""
        return Ending(
            thinking=self._shown(rest.thinking), content=content, held=held, tool_calls=calls
        )

    def _shown(self, thinking: str) -> str:
        return thinking if self._show_thinking else ""

    def _passed(self, content: str) -> tuple[str, list[ToolCall]]:
        if self._buffer is None:
            return content, []
        return self._buffer.feed(content)

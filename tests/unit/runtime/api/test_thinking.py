"""Thinking: ``think`` values, what templates receive, and reasoning split from the answer."""

from __future__ import annotations

import pytest

from corral_runtime.api.errors import ApiError
from corral_runtime.api.thinking import (
    Split,
    ThinkingSplitter,
    opens_thinking,
    parse_think,
    reasoning_splitter,
    split_answer,
)
from corral_runtime.templates.chat import GoChatTemplate
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.templates.messages import ChatMessage

pytestmark = pytest.mark.unit

HELLO = [ChatMessage(role="user", content="Hi")]


def test_think_values() -> None:
    assert parse_think(None) is None and parse_think("") is None
    assert parse_think(True) is True and parse_think(False) is False
    assert parse_think("high") == "high" and parse_think(" Low ") == "low"
    assert parse_think("false") is False
    with pytest.raises(ApiError, match="invalid think value 'maximum'") as raised:
        parse_think("maximum")
    assert raised.value.status == 400


def test_go_templates_get_think_and_its_level() -> None:
    template = GoChatTemplate(
        "{{ .Prompt }}|{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ .Thinking }}"
    )
    assert template.render(HELLO, think="high") == "Hi|true|high|true"
    assert template.render(HELLO, think=True) == "Hi|true||true"
    assert template.render(HELLO, think=False) == "Hi|false||true"
    assert template.render(HELLO) == "Hi|false||false"


def test_jinja_templates_get_enable_thinking_and_the_level() -> None:
    template = JinjaChatTemplate(
        "{{ enable_thinking }}|{{ thinking }}|{{ reasoning_effort | default('-') }}"
    )
    assert template.render(HELLO, think="low") == "True|True|low"
    assert template.render(HELLO, think=False) == "False|False|-"


def run(pieces: list[str], *, inside: bool = False) -> Split:
    splitter = ThinkingSplitter(inside=inside)
    out = Split()
    for piece in [*pieces, None]:
        part = splitter.feed(piece) if piece is not None else splitter.finish()
        out.thinking += part.thinking
        out.content += part.content
    return out


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>why</think>answer"],
        ["<thi", "nk>wh", "y</th", "ink>ans", "wer"],
        list("<think>why</think>answer"),
    ],
)
def test_reasoning_is_split_across_any_pieces(pieces: list[str]) -> None:
    assert run(pieces) == Split(thinking="why", content="answer")


def test_a_prompt_that_opens_thinking_starts_inside_it() -> None:
    assert opens_thinking("<start_of_turn>model\n<think>\n")
    assert opens_thinking("<think>a</think> ok <think>high\n")
    assert not opens_thinking("<think></think>") and not opens_thinking("plain")
    assert run(["because", "</think>", "yes"], inside=True) == Split("because", "yes")
    # A tag that never closes leaves everything where it began; a partial tag is text.
    assert run(["still thinking <"], inside=True) == Split("still thinking <", "")
    assert run(["a < b"]) == Split("", "a < b")


def test_templates_without_thinking_are_not_split() -> None:
    assert split_answer(reasoning_splitter(False, "<think>"), "<think>x</think>y") == Split(
        content="<think>x</think>y"
    )
    assert split_answer(reasoning_splitter(True, "<think>"), "x</think>y") == Split("x", "y")


def test_openai_reasoning_sent_back_reaches_the_template() -> None:
    from corral_runtime.api.openai_protocol import ChatMessageIn

    earlier = ChatMessageIn(role="assistant", content="4", reasoning_content="2+2").to_chat()
    template = GoChatTemplate(
        "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
        "{{ .Content }}|{{ end }}"
    )
    assert template.render([*HELLO, earlier]) == "Hi|<think>2+2</think>4|"

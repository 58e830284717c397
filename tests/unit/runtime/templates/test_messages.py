"""The conversation a chat renders: the model's MESSAGES and SYSTEM layers around a request's."""

from __future__ import annotations

import pytest

from corral_runtime.templates.messages import ChatMessage, with_model_defaults

pytestmark = pytest.mark.unit

HI = ChatMessage(role="user", content="Hi")
STORED = [
    {"role": "user", "content": "My name is Zorblax."},
    {"role": "assistant", "content": "Hello, Zorblax."},
]


def test_the_models_system_prompt_leads() -> None:
    assert with_model_defaults([HI], system="Be brief.", stored=[]) == [
        ChatMessage(role="system", content="Be brief."),
        HI,
    ]


def test_a_requests_system_message_replaces_the_models() -> None:
    own = [ChatMessage(role="system", content="Be verbose."), HI]
    assert with_model_defaults(own, system="Be brief.", stored=[]) == own


def test_the_models_messages_come_first() -> None:
    assert with_model_defaults([HI], system="Be brief.", stored=STORED) == [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="My name is Zorblax."),
        ChatMessage(role="assistant", content="Hello, Zorblax."),
        HI,
    ]


def test_stored_turns_that_are_no_chat_message_are_left_out() -> None:
    stored = [{"role": "wizard", "content": "x"}, {"role": "user", "content": 3}, "text"]
    assert with_model_defaults([HI], system=None, stored=stored) == [HI]  # type: ignore[list-item]

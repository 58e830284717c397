"""The chat request ``corral run`` sends and how it reads Ollama's NDJSON stream."""

from __future__ import annotations

import json

import httpx
import pytest

from corral_operator.cli.chat import Conversation, parse_stream
from corral_operator.cli.cluster import CommandError

pytestmark = pytest.mark.unit


def lines(*chunks: object) -> list[str]:
    return [c if isinstance(c, str) else json.dumps(c) for c in chunks]


def test_pieces_in_order_blank_keepalives_skipped_and_done_ends() -> None:
    stream = lines(
        "",
        " ",
        {"message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": False},
        {"message": {"role": "assistant", "content": "lo"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True},
        {"message": {"content": "after done"}},
    )
    assert list(parse_stream(iter(stream))) == ["Hel", "lo"]


def test_error_line_raises_with_its_text() -> None:
    stream = lines({"message": {"content": "a"}}, {"error": "model 'x' not found"})
    pieces = parse_stream(iter(stream))
    assert next(pieces) == "a"
    with pytest.raises(CommandError, match="model 'x' not found"):
        next(pieces)


def test_garbage_raises() -> None:
    with pytest.raises(CommandError, match="unexpected reply"):
        list(parse_stream(iter(["<html>"])))


def test_request_carries_system_history_and_keep_alive() -> None:
    with httpx.Client() as http:
        conv = Conversation(http, "gemma3:270m", system="be brief", keep_alive="10m")
        conv.messages += [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        body = conv.request_body("again")
    assert body == {
        "model": "gemma3:270m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "stream": True,
        "keep_alive": "10m",
    }
    with httpx.Client() as http:
        plain = Conversation(http, "m").request_body("x")
    assert plain == {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}

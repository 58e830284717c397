"""The chat request ``corral run`` sends and how it reads Ollama's NDJSON streams."""

from __future__ import annotations

import json

import httpx
import pytest

from corral_operator.cli.chat import Conversation, read_chunks
from corral_operator.cli.cluster import CommandError

pytestmark = pytest.mark.unit


def lines(*chunks: object) -> list[str]:
    return [c if isinstance(c, str) else json.dumps(c) for c in chunks]


def test_chunks_in_order_blank_keepalives_skipped_and_done_ends() -> None:
    stream = lines(
        "",
        " ",
        {"message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"message": {"role": "assistant", "content": "lo"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 2},
        {"message": {"content": "after done"}},
    )
    chunks = list(read_chunks(iter(stream)))
    assert [c["message"]["content"] for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1]["eval_count"] == 2
    # A pull's stream has no done chunk: every line is progress.
    progress = lines({"status": "pulling manifest"}, {"status": "success"})
    assert len(list(read_chunks(iter(progress), until_done=False))) == 2


def test_error_line_raises_with_its_text() -> None:
    stream = lines({"message": {"content": "a"}}, {"error": "model 'x' not found"})
    chunks = read_chunks(iter(stream))
    assert next(chunks)["message"] == {"content": "a"}
    with pytest.raises(CommandError, match="model 'x' not found"):
        next(chunks)


def test_garbage_raises() -> None:
    with pytest.raises(CommandError, match="unexpected reply"):
        list(read_chunks(iter(["<html>"])))
    with pytest.raises(CommandError, match="unexpected reply"):
        list(read_chunks(iter(["[1, 2]"])))


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


def test_format_and_think_only_when_set() -> None:
    with httpx.Client() as http:
        conv = Conversation(http, "m", options={"num_predict": 8}, format="json", think=False)
        body = conv.request_body("x")
    assert body["format"] == "json" and body["think"] is False
    assert body["options"] == {"num_predict": 8}

"""``corral run`` against the real runtime (``--host``): one-shot, piped, interactive at a
terminal, and the errors a user sees."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import httpx
import ollama
import pytest

from corral_operator.cli.chat import Conversation, interact
from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 16, "seed": 7}
OPTION_ARGS = [arg for k, v in GREEDY.items() for arg in ("-o", f"{k}={v}")]


def corral(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOST", "OLLAMA_HOST")}
    return subprocess.run(
        [sys.executable, "-m", "corral_runtime.cli", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **(env or {})},
    )


def reference_reply(server: RunningServer, prompt: str) -> str:
    with ollama.Client(host=server.base_url) as client:
        reply = client.chat(
            model=MODEL, messages=[{"role": "user", "content": prompt}], options=GREEDY
        )
    return str(reply.message.content)


def test_one_prompt_prints_the_streamed_reply(runtime_server: RunningServer) -> None:
    prompt = "Why is the sky blue?"
    result = corral("run", MODEL, *prompt.split(), "--host", runtime_server.base_url, *OPTION_ARGS)
    assert result.returncode == 0, result.stderr
    expected = reference_reply(runtime_server, prompt)
    assert expected.strip()
    assert result.stdout == expected + "\n"
    assert result.stderr == ""


def test_piped_input_is_the_prompt_and_ollama_host_is_honoured(
    runtime_server: RunningServer,
) -> None:
    prompt = "Name three colors."
    # OLLAMA_HOST in Ollama's own form: host:port, no scheme.
    host = runtime_server.base_url.removeprefix("http://")
    result = corral("run", MODEL, *OPTION_ARGS, stdin=prompt + "\n", env={"OLLAMA_HOST": host})
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference_reply(runtime_server, prompt) + "\n"


def test_the_stream_arrives_in_pieces_and_the_conversation_grows(
    runtime_server: RunningServer,
) -> None:
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        conversation = Conversation(http, MODEL, options=GREEDY)
        pieces = list(conversation.stream("Count from one to five."))
        assert len(pieces) >= 2
        assert conversation.messages == [
            {"role": "user", "content": "Count from one to five."},
            {"role": "assistant", "content": "".join(pieces)},
        ]


def test_the_prompt_loop_keeps_history_until_bye(
    runtime_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = iter(["Hello there.", "", "/?", "What did I just say?", "/bye", "never read"])
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        return next(lines)

    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        conversation = Conversation(http, MODEL, options=GREEDY)
        interact(conversation, read, sys.stdout)
        assert [m["role"] for m in conversation.messages] == ["user", "assistant"] * 2
        assert conversation.messages[2]["content"] == "What did I just say?"
        more = iter(["/clear", "/bye"])
        interact(conversation, lambda _prompt: next(more), sys.stdout)
        assert conversation.messages == []
    assert prompts == [">>> "] * 5
    out = capsys.readouterr().out
    assert "/bye" in out  # the help text
    assert "Cleared the conversation." in out


def test_interactive_at_a_terminal(runtime_server: RunningServer) -> None:
    """A real pseudo-terminal: the prompt appears, a reply streams, /bye exits with 0."""
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral_runtime.cli",
            "run",
            MODEL,
            "--host",
            runtime_server.base_url,
            *OPTION_ARGS,
        ],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        close_fds=True,
    )
    os.close(child_fd)
    seen = b""

    def read_until(marker: bytes, count: int, timeout: float = 90) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while seen.count(marker) < count:
            assert time.monotonic() < deadline, f"no {marker!r} in {seen!r}"
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main_fd, 4096)
                except OSError:
                    break

    try:
        read_until(b">>> ", 1)
        os.write(main_fd, b"Say hello.\n")
        read_until(b">>> ", 2)
        os.write(main_fd, b"/bye\n")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(main_fd)
    reply = seen.split(b"Say hello.", 1)[1].rsplit(b">>> ", 1)[0]
    assert reply.strip(), seen


def test_unknown_model_is_one_error_line(runtime_server: RunningServer) -> None:
    result = corral("run", "no-such-model:1b", "hi", "--host", runtime_server.base_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: 404 from ")
    assert "no-such-model:1b" in result.stderr
    assert result.stderr.count("\n") == 1


def test_nothing_listening_is_one_error_line() -> None:
    from devstack.controlplane import free_port

    result = corral("run", MODEL, "hi", "--host", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot connect to http://127.0.0.1:")
    assert result.stderr.count("\n") == 1

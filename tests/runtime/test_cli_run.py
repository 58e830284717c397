"""``corral run`` against the real runtime (``--host``): one-shot, piped into and out of other
programs, the session's commands against the server, a missing model pulled, and the errors a
user sees. The session at a real terminal is test_cli_repl."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from corral_operator.cli.chat import Conversation, ensure_model
from corral_operator.cli.cluster import CommandError
from corral_operator.cli.repl import Repl
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.support.registry import TestRegistry

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


def test_a_reply_stopped_midway_leaves_no_turn(runtime_server: RunningServer) -> None:
    """What Ctrl-C does to a streaming reply (the stream is closed): the conversation is as it
    was, so the next prompt is sent without the half answer."""
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        conversation = Conversation(http, MODEL, options={"num_predict": 200, "temperature": 0})
        pieces = conversation.stream("Count from one to fifty.")
        next(pieces), next(pieces)
        pieces.close()
        assert conversation.messages == []
        assert list(conversation.stream("Say hi.")) and len(conversation.messages) == 2


class Lines:
    """The session's reader over given lines (the terminal itself is test_cli_repl's)."""

    def __init__(self, *lines: str) -> None:
        self.lines, self.prompts, self.history = list(lines), list[str](), True

    def read(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def pulling_server_settings(store: ModelStore) -> Any:
    """A ``corral serve`` that may pull from the loopback test registry."""
    return settings_for(store.root, pull_allowed_hosts=["127.0.0.1"], pull_allow_insecure=True)


def test_the_session_keeps_its_turns_and_its_commands_reach_the_server(
    runtime_server: RunningServer,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    reader = Lines(
        "Hello there.",
        "",
        "/set verbose",
        "What did I just say?",
        "/show parameters",
        "/load no-such-model:1b",
        "/bye",
        "never read",
    )
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        conversation = Conversation(http, MODEL, options=dict(GREEDY))
        Repl(conversation, reader, out, err).run()
        assert [m["role"] for m in conversation.messages] == ["user", "assistant"] * 2
        assert conversation.messages[2]["content"] == "What did I just say?"
        assert conversation.model == MODEL  # the failed /load changed nothing
        Repl(conversation, Lines("/clear", "/bye"), out, err).run()
        assert conversation.messages == []
    assert reader.lines == ["never read"]
    text = out.getvalue()
    assert "Model defined parameters:" in text and "User defined parameters:" in text
    assert "Couldn't find model 'no-such-model:1b'" in text
    assert "Cleared session context" in text
    # /set verbose: Ollama's timing summary after the second reply only, on stderr.
    stats = err.getvalue()
    assert stats.count("eval rate:") == 2  # "prompt eval rate" and "eval rate", once each
    assert "prompt eval count:" in stats and "total duration:" in stats


def test_a_missing_model_is_pulled_first(tiny_registry: TestRegistry, store: ModelStore) -> None:
    name = f"{tiny_registry.host}/library/tiny"
    with serve(pulling_server_settings(store), store) as server:
        url = server.base_url
        result = corral("run", name, "hi", "--host", url, "--insecure", "-o", "num_predict=4")
        assert result.returncode == 0, result.stderr
        assert "pulling manifest" in result.stderr and "success" in result.stderr
        assert store.get(name).model_path.exists()
        again = corral("run", name, "hi", "--host", url, "-o", "num_predict=4")
        assert again.returncode == 0 and again.stderr == ""  # present now: no pull


def test_through_the_gateway_a_missing_model_is_not_pulled_but_deployed(
    runtime_server: RunningServer,
) -> None:
    """Where choose_server picked the cluster's gateway, a 404 means "not deployed": the error
    names `corral deploy`, and nothing is pulled."""
    pulled: list[dict[str, Any]] = []
    with httpx.Client(base_url=runtime_server.base_url, timeout=60) as http:
        conversation = Conversation(http, "no-such-model:1b")
        with pytest.raises(CommandError, match=r"not deployed.*`corral deploy no-such-model:1b`"):
            ensure_model(conversation, pulled.append, gateway=True)
        ensure_model(Conversation(http, MODEL), pulled.append, gateway=True)  # it is there
    assert pulled == []


def test_a_model_that_cannot_be_pulled_is_one_error_line(
    tiny_registry: TestRegistry, store: ModelStore
) -> None:
    with serve(pulling_server_settings(store), store) as server:
        name = f"{tiny_registry.host}/library/nope"
        result = corral("run", name, "hi", "--host", server.base_url, "--insecure")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert "file does not exist" in result.stderr
    assert result.stderr.count("Error") == 1


def test_the_reply_piped_into_head_ends_quietly(runtime_server: RunningServer) -> None:
    """``corral run M hi | head -c 1``: the reader leaves after one byte while the reply is
    still streaming; corral ends at once, exit 0, no traceback."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOST", "OLLAMA_HOST")}
    command = (
        f"{sys.executable} -m corral_runtime.cli run {MODEL} 'Tell me a long story.' "
        f"--host {runtime_server.base_url} -o num_predict=400 -o temperature=0 "
        '| head -c 1; echo " ${PIPESTATUS[0]}"'
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120, env=environ)
    assert result.stderr == b""
    assert len(result.stdout) == 4 and result.stdout.endswith(b" 0\n"), result.stdout


def test_nothing_listening_is_one_error_line() -> None:
    from devstack.controlplane import free_port

    result = corral("run", MODEL, "hi", "--host", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot connect to http://127.0.0.1:")
    assert result.stderr.count("\n") == 1

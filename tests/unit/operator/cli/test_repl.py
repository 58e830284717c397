"""``corral run``'s session: what a line means, multi-line input, typed parameters, the /save
request, and the commands that change the session without a server."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral_operator.cli.chat import Conversation
from corral_operator.cli.repl import (
    ALT_PROMPT,
    EXIT_HINT,
    HISTORY_LENGTH,
    PROMPT,
    Assembler,
    Entry,
    LineEditor,
    Repl,
    create_body,
    system_text,
    typed_parameter,
)

pytestmark = pytest.mark.unit


def feed_all(*lines: str) -> list[Entry | None]:
    assembler = Assembler()
    return [assembler.feed(line) for line in lines]


def test_a_plain_line_is_one_entry() -> None:
    assert feed_all("hello", "/show info") == [Entry("line", "hello"), Entry("line", "/show info")]


def test_triple_quotes_join_lines_until_a_line_ends_with_them() -> None:
    assert feed_all('"""first', "", "second", 'third"""') == [
        None,
        None,
        None,
        Entry("prompt", "first\n\nsecond\nthird"),
    ]
    assert feed_all('"""', "/bye", '"""') == [None, None, Entry("prompt", "\n/bye\n")]
    assert feed_all('"""all on one line"""') == [Entry("prompt", "all on one line")]


def test_a_multi_line_system_message() -> None:
    assert feed_all('/set system """You are', 'terse."""') == [
        None,
        Entry("system", "You are\nterse."),
    ]
    assert feed_all('/set system """one line"""') == [Entry("system", "one line")]
    assert feed_all("/set system plain words") == [Entry("line", "/set system plain words")]


def test_the_assembler_says_when_it_waits_and_forgets_on_reset() -> None:
    assembler = Assembler()
    assert assembler.feed('"""a') is None and assembler.open
    assembler.reset()
    assert not assembler.open
    assert assembler.feed("b") == Entry("line", "b")


def test_system_text_drops_one_pair_of_quotes() -> None:
    assert system_text(' "Be brief."  ') == "Be brief."
    assert system_text("Talk  like a pirate") == "Talk  like a pirate"
    assert system_text("'x'") == "x"
    assert system_text('"') == '"'


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("num_predict", ["8"], 8),
        ("temperature", ["0.5"], 0.5),
        ("top_p", ["1"], 1.0),
        ("use_mmap", ["false"], False),
        ("stop", ["<end>", "User:"], ["<end>", "User:"]),
        ("stop", ["only"], ["only"]),
    ],
)
def test_parameters_are_typed_by_ollamas_table(
    key: str, values: list[str], expected: object
) -> None:
    value = typed_parameter(key, values)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        ("no_such", ["1"], "unknown parameter 'no_such'"),
        ("num_predict", ["many"], "integer"),
        ("temperature", ["hot"], "number"),
        ("num_ctx", ["1", "2"], "one value"),
        ("use_mmap", ["maybe"], "true or false"),
    ],
)
def test_bad_parameters_say_why(key: str, values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        typed_parameter(key, values)


def conversation(system: str | None = None, options: dict[str, Any] | None = None) -> Conversation:
    # The client is never used by the commands under test: they change only the session.
    http = httpx.Client(base_url="http://127.0.0.1:9")
    return Conversation(http, "gemma3:270m", system=system, options=options or {})


def test_save_sends_the_session_as_a_model() -> None:
    conv = conversation(system="be brief", options={"num_predict": 8, "stop": ["x"]})
    conv.messages += [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert create_body("mine", conv) == {
        "model": "mine",
        "from": "gemma3:270m",
        "system": "be brief",
        "parameters": {"num_predict": 8, "stop": ["x"]},
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ],
    }
    assert create_body("bare", conversation()) == {"model": "bare", "from": "gemma3:270m"}


class Lines:
    """A reader over given lines; an exception instance in the list is raised at its turn."""

    def __init__(self, *lines: str | BaseException) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []
        self.history = True

    def read(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line


def session(*lines: str | BaseException, conv: Conversation | None = None) -> tuple[Repl, str]:
    out = io.StringIO()
    repl = Repl(conv or conversation(), Lines(*lines), out, io.StringIO())
    repl.run()
    return repl, out.getvalue()


def test_set_commands_change_what_the_next_request_carries() -> None:
    repl, out = session(
        "/set parameter num_predict 8",
        "/set parameter stop a b",
        "/set system Be brief.",
        "/set format json",
        "/set think",
        "/set verbose",
        "/set nohistory",
    )
    body = repl.conversation.request_body("hi")
    assert body["options"] == {"num_predict": 8, "stop": ["a", "b"]}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["format"] == "json" and body["think"] is True
    assert repl.verbose and not repl.reader.history
    assert "Set parameter 'num_predict' to '8'" in out
    assert "Set system message." in out
    repl, _ = session(
        "/set format json", "/set noformat", "/set nothink", "/set quiet", conv=repl.conversation
    )
    body = repl.conversation.request_body("hi")
    assert "format" not in body and body["think"] is False and not repl.verbose


def test_mistakes_are_said_and_the_session_goes_on() -> None:
    repl, out = session(
        "/set parameter nonsense 1",
        "/set parameter num_ctx big",
        "/set format yaml",
        "/set colour blue",
        "/frobnicate now",
        "/set parameter seed 3",
    )
    assert "Couldn't set parameter: unknown parameter 'nonsense'" in out
    assert "Couldn't set parameter: parameter num_ctx takes an integer" in out
    assert "Invalid or missing format" in out
    assert "Unknown command '/set colour'" in out
    assert "Unknown command '/frobnicate'. Type /? for help" in out
    assert repl.conversation.options == {"seed": 3}


def test_help_topics() -> None:
    _, out = session("/?", "/help set", "/? show", "/? shortcuts", "/set", "/set parameter")
    assert "/load MODEL" in out and '"""' in out
    assert "history | nohistory" in out
    assert "template" in out
    assert "Ctrl + c" in out
    assert "num_predict INT" in out


def test_clear_bye_and_ctrl_d() -> None:
    conv = conversation()
    conv.messages.append({"role": "user", "content": "old"})
    repl, out = session("/clear", "/bye", "never read", conv=conv)
    assert conv.messages == [] and "Cleared session context" in out
    assert repl.reader.lines == ["never read"]  # type: ignore[attr-defined]
    _, out = session()  # Ctrl-D at once: a newline, and the session ends
    assert out == "\n"


def test_ctrl_c_at_the_prompt_drops_the_block_and_says_how_to_leave() -> None:
    repl, out = session('"""half a', KeyboardInterrupt(), "/set system after")
    assert EXIT_HINT in out
    assert repl.reader.prompts == [PROMPT, ALT_PROMPT, PROMPT, PROMPT]  # type: ignore[attr-defined]
    assert repl.conversation.system == "after"


def test_a_multi_line_system_message_through_the_session() -> None:
    repl, _ = session('/set system """Line one', 'line two"""')
    assert repl.conversation.system == "Line one\nline two"
    assert repl.reader.prompts[:2] == [PROMPT, ALT_PROMPT]  # type: ignore[attr-defined]


def test_the_history_file_keeps_the_newest_lines(tmp_path: Path) -> None:
    import readline

    path = tmp_path / ".corral" / "history"
    path.parent.mkdir()
    path.write_text("".join(f"line {n}\n" for n in range(HISTORY_LENGTH + 5)))
    try:
        LineEditor(path)
        kept = path.read_text().splitlines()
    finally:
        readline.clear_history()
    assert len(kept) == HISTORY_LENGTH and kept[-1] == f"line {HISTORY_LENGTH + 4}"
    LineEditor(tmp_path / "new" / "history")  # a missing folder and file are made
    readline.clear_history()
    assert (tmp_path / "new" / "history").exists()

"""``corral run``'s session at a real terminal: the ``corral`` command in a pseudo-terminal,
talking to a real server found through OLLAMA_HOST, typed at as a person types (line editing,
arrow keys, Ctrl-C, Ctrl-D)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
PROMPT = b">>> "
UP, LEFT, RIGHT = b"\x1b[A", b"\x1b[D", b"\x1b[C"
CTRL_C, CTRL_D = b"\x03", b"\x04"


@dataclass
class Terminal:
    """A process on the far side of a pseudo-terminal, and everything it has written."""

    proc: subprocess.Popen[bytes]
    fd: int
    seen: bytes = b""
    read_to: int = 0
    marks: list[int] = field(default_factory=list)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def expect(self, marker: bytes, timeout: float = 120) -> bytes:
        """Wait for ``marker`` after what was already expected; returns the text before it."""
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(marker, self.read_to)) < 0:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.seen[self.read_to :]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the session ended before {marker!r}: {self.seen!r}"
                self.seen += chunk
        before = self.seen[self.read_to : found]
        self.read_to = found + len(marker)
        return before

    def say(self, line: bytes, timeout: float = 120) -> bytes:
        """Type ``line`` and Enter; the output up to the next prompt."""
        self.type(line + b"\r")
        return self.expect(PROMPT, timeout)

    def wait_for_more(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` bytes beyond what was expected have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.seen) - self.read_to < count:
            assert time.monotonic() < deadline, f"no more output after {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                self.seen += os.read(self.fd, 4096)


def answer(output: bytes) -> bytes:
    """The reply in what followed a typed line: everything after the line's own echo."""
    return output.split(b"\n", 1)[1].strip() if b"\n" in output else b""


def controlling_terminal() -> None:
    """In the child: make its stdin (the pty) the controlling terminal of its new session, so
    Ctrl-C typed there reaches it as SIGINT, as at a real terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.fixture
def terminal(runtime_server: RunningServer, tmp_path: Path) -> Iterator[Terminal]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOST", "KUBECONFIG")}
    environ |= {
        # Ollama's own form, host:port: the session finds the server as `ollama run` would.
        "OLLAMA_HOST": runtime_server.base_url.removeprefix("http://"),
        "HOME": str(tmp_path),
        "TERM": "xterm",
    }
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral_runtime.cli", "run", MODEL],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        close_fds=True,
        env=environ,
        start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(child_fd)
    try:
        yield Terminal(proc, main_fd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(main_fd)


def test_a_session_as_a_person_types_it(
    terminal: Terminal, runtime_server: RunningServer, tmp_path: Path
) -> None:
    saved = f"repl-{uuid.uuid4().hex[:8]}:latest"
    t = terminal
    t.expect(PROMPT)
    assert b"Set parameter 'num_predict' to '8'" in t.say(b"/set parameter num_predict 8")
    assert b"Set parameter 'temperature' to '0'" in t.say(b"/set parameter temperature 0")
    assert b"Couldn't set parameter" in t.say(b"/set parameter colour blue")
    assert b"Set system message." in t.say(b'/set system "You are terse."')
    parameters = t.say(b"/show parameters")
    assert b"User defined parameters:" in parameters
    assert b"num_predict" in parameters.split(b"User defined parameters:")[1]
    assert b"You are terse." in t.say(b"/show system")

    # Editing keys move the cursor (readline), they are never printed as ^[[D.
    assert answer(t.say(b"Say hi" + LEFT + RIGHT + b"."))
    again = t.say(UP)  # the previous line, from the history
    assert b"Say hi." in again and answer(again)
    assert b"^[[" not in t.seen
    assert "Say hi." in (tmp_path / ".corral" / "history").read_text()

    # Ctrl-C while a long reply streams stops it; the session goes on.
    t.say(b"/set parameter num_predict 4000")
    t.type(b"Count from one to one thousand, one number per line.\r")
    t.expect(b"one number per line.")
    t.expect(b"\n")
    t.wait_for_more(20)  # a few tokens of the reply have arrived
    stopped = time.monotonic()
    t.type(CTRL_C)
    t.expect(PROMPT, timeout=20)
    assert time.monotonic() - stopped < 20
    assert b"Traceback" not in t.seen
    t.say(b"/set parameter num_predict 8")
    assert answer(t.say(b"Say hi."))

    # A """ block is one message, typed over several lines under the "... " prompt.
    t.type(b'"""First line,\r')
    t.expect(b"... ")
    assert answer(t.say(b'second line."""'))

    # Ctrl-C at the prompt says how to leave, and leaves nothing behind. Typed as a person
    # types: the words, and Ctrl-C once they show. (Sent the instant the prompt is drawn, the
    # terminal discards the words with the Ctrl-C, and CPython's readline can take the signal
    # just before it waits for keys, so it waits on: a window no person's keystrokes hit.)
    t.type(b"half a thought")
    t.expect(b"half a thought")
    time.sleep(0.3)
    t.type(CTRL_C)
    assert b"Use Ctrl + d or /bye to exit." in t.expect(PROMPT)

    assert f"Created new model '{saved}'".encode() in t.say(b"/save " + saved.encode())
    assert f"Loading model '{saved}'".encode() in t.say(b"/load " + saved.encode())
    assert b"Couldn't find model" in t.say(b"/load no-such-model:1b")
    assert answer(t.say(b"Say hi."))
    assert b"Unknown command '/nonsense'" in t.say(b"/nonsense")
    t.type(b"/bye\r")
    assert t.proc.wait(30) == 0

    with httpx.Client(base_url=runtime_server.base_url, timeout=30) as http:
        try:
            shown = http.post("/api/show", json={"model": saved}).json()
            assert shown["system"] == "You are terse."
            assert re.search(r"^num_predict +8$", shown["parameters"], re.M)
            assert re.search(r"^temperature +0(\.0)?$", shown["parameters"], re.M)
        finally:
            http.request("DELETE", "/api/delete", json={"model": saved})


def test_ctrl_d_leaves_with_exit_0(terminal: Terminal) -> None:
    terminal.expect(PROMPT)
    terminal.type(CTRL_D)
    assert terminal.proc.wait(30) == 0

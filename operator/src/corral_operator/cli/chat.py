"""``corral run``'s conversation: Ollama's /api/chat, streamed, printed token by token.

Interactive use keeps the conversation (every turn is sent with the ones before it) until
``/bye`` or end of input; non-interactive use sends one prompt and prints one reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from corral_operator.cli.cluster import CommandError

BYE = "/bye"
HELP = """Available commands:
  /clear   forget the conversation so far
  /bye     exit
  /?       this help"""
# Connecting is quick or fails; reading may wait as long as a model takes to wake from zero
# (the gateway holds the request and sends keep-alive bytes meanwhile).
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)


@dataclass
class Conversation:
    """One chat with one model through one server."""

    http: httpx.Client
    model: str
    system: str | None = None
    keep_alive: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)

    def request_body(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [*messages, *self.messages, {"role": "user", "content": prompt}],
            "stream": True,
        }
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.options:
            body["options"] = dict(self.options)
        return body

    def stream(self, prompt: str) -> Iterator[str]:
        """Send ``prompt`` and yield the reply's pieces as they arrive; the turn is added to the
        conversation only once the reply is complete."""
        reply: list[str] = []
        try:
            with self.http.stream("POST", "/api/chat", json=self.request_body(prompt)) as response:
                if response.status_code != 200:
                    response.read()
                    raise CommandError(_error_text(response))
                for piece in parse_stream(response.iter_lines()):
                    reply.append(piece)
                    yield piece
        except httpx.ConnectError as exc:
            raise CommandError(f"cannot connect to {self.http.base_url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise CommandError(f"the request to {self.http.base_url} failed: {exc}") from None
        self.messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "".join(reply)},
        ]


def parse_stream(lines: Iterator[str]) -> Iterator[str]:
    """The content pieces of an /api/chat NDJSON stream; an ``error`` line raises."""
    for line in lines:
        if not line.strip():
            continue  # keep-alive bytes while a held request waits for its model
        try:
            chunk = json.loads(line)
        except ValueError:
            raise CommandError(f"unexpected reply from the server: {line[:200]!r}") from None
        if chunk.get("error"):
            raise CommandError(str(chunk["error"]))
        content = (chunk.get("message") or {}).get("content")
        if content:
            yield str(content)
        if chunk.get("done"):
            return


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error") or response.text
    except ValueError:
        detail = response.text
    return f"{response.status_code} from {response.request.url}: {str(detail).strip()[:500]}"


def say(conversation: Conversation, prompt: str, out: TextIO) -> None:
    for piece in conversation.stream(prompt):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def interact(conversation: Conversation, read: Callable[[str], str], out: TextIO) -> None:
    """The prompt loop: ``read`` is ``input`` at a terminal; EOF or ``/bye`` ends it."""
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == BYE:
            return
        if text == "/clear":
            conversation.messages.clear()
            out.write("Cleared the conversation.\n")
            continue
        if text in ("/?", "/help"):
            out.write(HELP + "\n")
            continue
        say(conversation, line, out)
        out.write("\n")

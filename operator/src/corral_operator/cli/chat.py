"""``corral run``'s wire side: Ollama's /api/chat streamed piece by piece, and the model calls
around a conversation (/api/show, /api/pull, /api/create).

Every call goes to one server (a ``corral serve``, the cluster's gateway, or Ollama itself) and
turns its failures into ``CommandError`` lines; the prompt loop is ``repl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from corral_operator.cli.cluster import CommandError

# Connecting is quick or fails; reading may wait as long as a model takes to wake from zero
# (the gateway holds the request and sends keep-alive bytes meanwhile).
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
THINKING_START = "Thinking...\n"
THINKING_END = "\n...done thinking.\n\n"


class ModelNotFound(CommandError):
    """The server answered 404 for the model (not in its store, or not deployed)."""


@dataclass
class Conversation:
    """One chat with one model through one server: the session's settings and its turns."""

    http: httpx.Client
    model: str
    system: str | None = None
    keep_alive: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    format: str | None = None
    think: bool | None = None
    final: dict[str, Any] | None = None
    """The last reply's closing chunk (``done``: its timings and counts)."""

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
        if self.format is not None:
            body["format"] = self.format
        if self.think is not None:
            body["think"] = self.think
        return body

    def stream(self, prompt: str) -> Generator[str]:
        """Send ``prompt`` and yield the reply's text as it arrives (thinking, when the model
        sends it, between Ollama's markers); the turn joins the conversation only once the
        reply is complete, so an interrupted reply leaves no trace."""
        reply: list[str] = []
        thinking = False
        self.final = None
        with self._call("POST", "/api/chat", self.request_body(prompt)) as response:
            for chunk in read_chunks(response.iter_lines()):
                message = chunk.get("message") or {}
                if message.get("thinking"):
                    if not thinking:
                        thinking = True
                        yield THINKING_START
                    yield str(message["thinking"])
                if message.get("content"):
                    if thinking:
                        thinking = False
                        yield THINKING_END
                    reply.append(str(message["content"]))
                    yield reply[-1]
                if chunk.get("done"):
                    self.final = chunk
        self.messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "".join(reply)},
        ]

    def show(self, model: str | None = None) -> dict[str, Any]:
        """/api/show of ``model`` (default the conversation's); ModelNotFound on a 404."""
        with self._call("POST", "/api/show", {"model": model or self.model}) as response:
            return dict(json.loads(response.read()))

    def pull(self, progress: Callable[[dict[str, Any]], None], *, insecure: bool = False) -> None:
        """/api/pull of the conversation's model, each progress chunk handed to ``progress``."""
        body = {"model": self.model, "stream": True, "insecure": insecure}
        with self._call("POST", "/api/pull", body) as response:
            for chunk in read_chunks(response.iter_lines(), until_done=False):
                progress(chunk)

    def create(self, body: dict[str, Any]) -> None:
        """/api/create, waiting for its one answer."""
        with self._call("POST", "/api/create", {**body, "stream": False}) as response:
            response.read()

    @contextmanager
    def _call(self, method: str, path: str, body: dict[str, Any]) -> Iterator[httpx.Response]:
        """One streamed request; a non-200 answer (404: ModelNotFound) and a transport
        failure, before or while reading, raise CommandError."""
        try:
            with self.http.stream(method, path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    error = ModelNotFound if response.status_code == 404 else CommandError
                    raise error(_error_text(response))
                yield response
        except httpx.ConnectError as exc:
            raise CommandError(f"cannot connect to {self.http.base_url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise CommandError(f"the request to {self.http.base_url} failed: {exc}") from None


def read_chunks(lines: Iterator[str], *, until_done: bool = True) -> Iterator[dict[str, Any]]:
    """The chunks of an Ollama NDJSON stream, up to its ``done`` one; an ``error`` line raises.
    Blank lines are the keep-alive bytes a gateway sends while a held request waits."""
    for line in lines:
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
        except ValueError:
            raise CommandError(f"unexpected reply from the server: {line[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise CommandError(f"unexpected reply from the server: {line[:200]!r}")
        if chunk.get("error"):
            raise CommandError(str(chunk["error"]))
        yield chunk
        if until_done and chunk.get("done"):
            return


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error") or response.text
    except (ValueError, AttributeError):
        detail = response.text
    return f"{response.status_code} from {response.request.url}: {str(detail).strip()[:500]}"


def say(conversation: Conversation, prompt: str, out: TextIO) -> None:
    """One reply printed as it streams, then a newline. The stream is closed on the way out,
    whatever ends it (Ctrl-C included), so the server stops generating at once."""
    pieces = conversation.stream(prompt)
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    finally:
        pieces.close()
    out.write("\n")
    out.flush()


def ensure_model(
    conversation: Conversation,
    progress: Callable[[dict[str, Any]], None],
    *,
    gateway: bool,
    insecure: bool = False,
) -> None:
    """Make sure the server has the model before the first turn, as ``ollama run`` does: a
    local server that lacks it pulls it (``progress`` sees each chunk); the cluster's gateway
    only serves deployed models, so there its absence is an error that says how to deploy it.
    A pull that fails is the error (a gateway behind ``--host`` says it serves no pulls)."""
    try:
        conversation.show()
        return
    except ModelNotFound:
        if gateway:
            raise CommandError(
                f"model {conversation.model!r} is not deployed in the cluster: "
                f"deploy it with `corral deploy {conversation.model}`"
            ) from None
    conversation.pull(progress, insecure=insecure)

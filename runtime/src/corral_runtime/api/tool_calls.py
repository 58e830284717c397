"""Recognising tool calls in a model's output.

Models answer a call as JSON: ``{"name": …, "arguments": {…}}`` (or ``"parameters"``), a list of
those, or either wrapped in ``<tool_call>…</tool_call>`` or a code fence. While streaming, output
that starts like a call is held back until its JSON is complete, then given out as a call (or
released as content when it is none); anything else streams at once.
"""

from __future__ import annotations

import json
from typing import Any

from corral_runtime.templates.messages import ToolCall


def _call_from(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    if names and name not in names:
        return None
    return ToolCall(name=name, arguments=arguments)


def find_tool_calls(text: str, names: set[str]) -> tuple[list[ToolCall], str]:
    """The calls in a whole answer and the content around them, decided as a stream of it is
    (``ToolCallBuffer``): calls from the start, then content; content first is all content."""
    buffer = ToolCallBuffer(names)
    content, calls = buffer.feed(text)
    return calls, content + buffer.finish()


# What may stand between, before or after calls: wrappers, list brackets and separators.
_WRAPPER_TOKENS = ("<tool_call>", "</tool_call>", "```json", "```")
_SEPARATORS = " \t\r\n,;[]"


def _skip_between_calls(text: str, *, complete: bool = False) -> int:
    """Where the next call could begin: past separators and whole wrapper tokens. A token that
    may still grow (``<tool``, or a fence that may become ```` ```json ````) stops the skip, so
    the caller waits for it, unless the output is ``complete``."""
    pos = 0
    while pos < len(text):
        rest = text[pos:]
        if not complete and _may_open_a_wrapper(rest):
            return pos
        token = next((t for t in _WRAPPER_TOKENS if rest.startswith(t)), None)
        if token is not None:
            pos += len(token)
        elif text[pos] in _SEPARATORS:
            pos += 1
        else:
            return pos
    return pos


def _may_open_a_wrapper(rest: str) -> bool:
    """Whether ``rest`` is a wrapper token still being written (``<tool``, a fence's ticks)."""
    return any(len(rest) < len(t) and t.startswith(rest) for t in _WRAPPER_TOKENS)


def _parsed_call(text: str, names: set[str]) -> ToolCall | None:
    try:
        return _call_from(json.loads(text), names)
    except ValueError:
        return None


class _Scan:
    """Finds where a JSON object ends, one piece at a time: brackets counted outside strings,
    each character read once however many pieces the object arrives in."""

    def __init__(self) -> None:
        self._reset(-1)

    def _reset(self, start: int) -> None:
        self.start = self.index = start
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def object_end(self, text: str, start: int) -> int | None:
        """The index just past the object opening at ``text[start]``; None while incomplete."""
        if start != self.start:
            self._reset(start)
        for i in range(self.index, len(text)):
            ch = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        self.index = len(text)
        return None


class ToolCallBuffer:
    """Streams content through, except output that may be tool calls: each call is given out as
    soon as its JSON is complete, so a client can start on the first while the model still writes
    the next. Output that stops looking like a call is released as content (all of it while no
    call was given out; after a call, what follows it)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._held = ""  # what is not released nor given out as a call yet
        self._content_mode = False
        self._called = False
        self._scan = _Scan()

    def feed(self, piece: str) -> tuple[str, list[ToolCall]]:
        """The content to send now, and the calls this piece completed."""
        if self._content_mode:
            return piece, []
        self._held += piece
        return self._drain()

    def finish(self) -> str:
        """The content still held once the output is complete (the calls were all given out as
        they completed): nothing when what is left only separates or wraps calls."""
        held, self._held = self._held, ""
        if self._content_mode or not held:
            return held
        if self._called and _skip_between_calls(held, complete=True) == len(held):
            return ""
        return held

    def _drain(self) -> tuple[str, list[ToolCall]]:
        calls: list[ToolCall] = []
        while True:
            text = self._held
            pos = _skip_between_calls(text)
            if pos == len(text) or _may_open_a_wrapper(text[pos:]):
                return "", calls
            if text[pos] != "{":
                return self._release(), calls
            end = self._scan.object_end(text, pos)
            if end is None:
                return "", calls
            call = _parsed_call(text[pos:end], self.names)
            if call is None:
                return self._release(), calls
            calls.append(call)
            self._called = True
            self._held = text[end:]
            self._scan = _Scan()

    def _release(self) -> str:
        self._content_mode = True
        held, self._held = self._held, ""
        return held

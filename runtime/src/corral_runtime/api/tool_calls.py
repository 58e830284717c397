"""Recognising tool calls in a model's output.

Models answer a call as JSON: ``{"name": …, "arguments": {…}}`` (or ``"parameters"``), a list of
those, or either wrapped in ``<tool_call>…</tool_call>`` or a code fence. While streaming, output
that starts like a call is held back until the end decides it; anything else streams at once.
"""

from __future__ import annotations

import json
import re
from typing import Any

from corral_runtime.templates.messages import ToolCall

_WRAPPERS = re.compile(r"</?tool_call>|^```(?:json)?|```$")
_OPENINGS = ("{", "[", "<tool_call>", "```")


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


def parse_tool_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    """The calls in ``text`` when all of it is calls; None when it is ordinary content."""
    body = _WRAPPERS.sub("", text.strip()).strip()
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while pos < len(body):
        try:
            value, end = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])
        pos = end
        while pos < len(body) and (body[pos].isspace() or body[pos] in ",;"):
            pos += 1
        if body.startswith("<tool_call>", pos) or body.startswith("</tool_call>", pos):
            pos = body.index(">", pos) + 1
    calls = [_call_from(v, names) for v in values]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


class ToolCallBuffer:
    """Streams content through, except output that may turn out to be tool calls."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._held = ""
        self._content_mode = False

    def feed(self, piece: str) -> str:
        if self._content_mode:
            return piece
        self._held += piece
        head = self._held.lstrip()
        if not head:
            return ""
        if any(head.startswith(o) or o.startswith(head) for o in _OPENINGS):
            return ""
        self._content_mode = True
        held, self._held = self._held, ""
        return held

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content still held, and the calls, once the output is complete."""
        held, self._held = self._held, ""
        if self._content_mode or not held:
            return held, []
        calls = parse_tool_calls(held, self.names)
        return ("", calls) if calls else (held, [])

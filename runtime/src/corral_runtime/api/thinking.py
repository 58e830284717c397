"""Thinking: what a request's ``think`` means, and the reasoning split out of an answer.

``think`` is Ollama's: true, false, or a level (``"low"``, ``"medium"``, ``"high"``), kept as a
level for templates that take one (Go templates' ``.ThinkLevel``, Jinja's ``reasoning_effort``).
For a model whose template supports thinking, text between ``<think>`` and ``</think>`` is the
model's reasoning: it goes to ``thinking`` (Ollama) or ``reasoning_content`` (OpenAI-compatible
servers), apart from the answer, and is not shown at all when ``think`` is false. A prompt that
leaves a ``<think>`` open (a template that opens the reasoning itself) starts the answer inside
it.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral_runtime.api.errors import ApiError

ThinkValue = bool | str | None
THINK_LEVELS = ("low", "medium", "high")
OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


def parse_think(value: ThinkValue, *, param: str = "think") -> ThinkValue:
    """A request's ``think`` as templates get it: None (unset), a bool, or a level."""
    if value is None or isinstance(value, bool):
        return value
    level = value.strip().lower()
    if not level:
        return None
    if level in THINK_LEVELS:
        return level
    if level in ("true", "false"):
        return level == "true"
    raise ApiError(
        400,
        f"invalid {param} value {value!r}: expected true, false, 'low', 'medium' or 'high'",
        param=param,
    )


def wants_thinking(think: ThinkValue) -> bool:
    return think is True or isinstance(think, str)


def shows_thinking(think: ThinkValue) -> bool:
    """Whether reasoning is sent: unless the request turned thinking off (unset sends what a
    thinking model writes), as Ollama does."""
    return think is not False


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves the model inside its reasoning: it opens a block it
    does not close (a template may put more after the tag, such as a level)."""
    return prompt.rfind(OPEN_TAG) > prompt.rfind(CLOSE_TAG)


@dataclass(slots=True)
class Split:
    thinking: str = ""
    content: str = ""


class ThinkingSplitter:
    """Splits streamed text into reasoning and answer at ``<think>``/``</think>``, holding back
    only what may be the start of a tag split across pieces."""

    def __init__(self, *, inside: bool = False) -> None:
        self._inside = inside
        self._held = ""

    def feed(self, text: str) -> Split:
        out = Split()
        text = self._held + text
        self._held = ""
        while text:
            tag = CLOSE_TAG if self._inside else OPEN_TAG
            at = text.find(tag)
            if at >= 0:
                self._emit(out, text[:at])
                text = text[at + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _partial_tag_suffix(text, tag)
            self._emit(out, text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return out

    def finish(self) -> Split:
        out = Split()
        self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: Split, text: str) -> None:
        if self._inside:
            out.thinking += text
        else:
            out.content += text


def _partial_tag_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def reasoning_splitter(supports_thinking: bool, prompt: str) -> ThinkingSplitter | None:
    """The splitter for an answer to ``prompt`` (None: the template has no reasoning to split)."""
    return ThinkingSplitter(inside=opens_thinking(prompt)) if supports_thinking else None


def split_answer(splitter: ThinkingSplitter | None, text: str) -> Split:
    """A whole answer split at once."""
    if splitter is None:
        return Split(content=text)
    first, rest = splitter.feed(text), splitter.finish()
    return Split(first.thinking + rest.thinking, first.content + rest.content)

"""Text in requests, checked once for every wire model before any field is read.

JSON can carry strings that are no Unicode text (a lone surrogate such as ``"\\ud800"``); such a
string cannot be encoded as UTF-8, so it would fail in a template or in llama.cpp's tokenizer on
the model's decode thread. ``ValidText`` refuses it up front, wherever it sits in the body
(prompts, messages, tool definitions, stop strings, schemas, option keys), with a 400 that names
the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

INVALID_TEXT = "invalid_text"


def encodable(text: str) -> bool:
    """Whether ``text`` is Unicode text that UTF-8 can encode (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode written as escapes (safe to put in an answer)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def first_invalid_text(value: Any) -> str | None:
    """Where the first string that is not valid text lies in a JSON value, as a dotted path
    (``"messages.0.content"``; ``""`` for the value itself), or None if every string is valid.
    Keys count as strings; the walk is iterative, so no nesting depth can exhaust the stack."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not encodable(item):
                return ".".join(path)
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                name = printable(str(key))
                if isinstance(key, str) and not encodable(key):
                    return ".".join((*path, name))
                stack.append(((*path, name), child))
        elif isinstance(item, list | tuple):
            stack.extend(((*path, str(i)), child) for i, child in reversed(list(enumerate(item))))
    return None


class ValidText(BaseModel):
    """A request model whose every string, at any depth, must be valid text."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_valid(cls, data: Any) -> Any:
        where = first_invalid_text(data)
        if where is not None:
            raise PydanticCustomError(
                INVALID_TEXT,
                "{field} is not valid Unicode text (it holds a lone surrogate)",
                {"field": where or "the body", "path": where},
            )
        return data

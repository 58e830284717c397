"""GGUF chat templates (Jinja, as Hugging Face writes them) rendered in Jinja's sandbox.

A template comes from a downloaded model file, so it is untrusted: the immutable sandbox refuses
attribute access to Python internals and any call that is not a plain filter or test, and a
failure of any kind becomes a ``TemplateError``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.messages import ChatMessage, Tool


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, autoescape=False, undefined=jinja2.Undefined
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def message_json(message: ChatMessage) -> dict[str, Any]:
    """A message in the shape Hugging Face templates expect (OpenAI-like, arguments as objects)."""
    doc: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        doc["tool_calls"] = [
            {
                "type": "function",
                **({"id": call.id} if call.id else {}),
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.thinking:
        doc["reasoning_content"] = message.thinking
    if message.tool_name:
        doc["name"] = message.tool_name
    if message.tool_call_id:
        doc["tool_call_id"] = message.tool_call_id
    return doc


class JinjaChatTemplate:
    """A GGUF ``tokenizer.chat_template``, compiled once per model."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"invalid chat template: {exc}") from exc

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.source

    @property
    def supports_thinking(self) -> bool:
        return "enable_thinking" in self.source or "reasoning_content" in self.source

    @property
    def supports_insert(self) -> bool:
        return False

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None = None,
        think: bool | None = None,
        suffix: str | None = None,
    ) -> str:
        del suffix  # Jinja chat templates have no fill-in-the-middle slot.
        context: dict[str, Any] = {
            "messages": [message_json(m) for m in messages],
            "add_generation_prompt": True,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:
            context["tools"] = [tool.to_json() for tool in tools]
        if think is not None:
            context["enable_thinking"] = think
        try:
            return self._template.render(context)
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc

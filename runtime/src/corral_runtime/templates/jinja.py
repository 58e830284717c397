"""GGUF chat templates (Jinja, as Hugging Face writes them) rendered in Jinja's sandbox.

A template comes from a downloaded model file, so it is untrusted: the immutable sandbox refuses
attribute access to Python internals and any call that is not a plain filter or test, and a
failure of any kind becomes a ``TemplateError``. The compiled template also counts its own work
against the render's budget (``budget.py``): each block it enters (a loop iteration, a branch, a
macro call) is a step, and each string it builds or writes is measured, so a template with
nested loops or a growing string stops with ``TemplateBudgetError`` instead of running for ever.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral_runtime.templates.budget import (
    Meter,
    TemplateBudgetError,
    bounded_args,
    current_meter,
)
from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.messages import ChatMessage, Tool

# A width or precision in a %-format ("%0999999999d") makes a string that large.
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# Exponents beyond this make integers too large to compute quickly (10 ** 10 ** 9).
_MAX_EXPONENT = 4096


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class _MeteredCodeGenerator(CodeGenerator):
    """Compiles a template whose every block starts with a step of the meter, and whose every
    ``~`` concatenation is measured (Jinja offers no hook for either)."""

    def blockvisit(self, nodes: Iterable[nodes.Node], frame: Frame) -> None:
        self.writeline("environment.step()")
        super().blockvisit(nodes, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")


def _join_measured(pieces: Iterable[str]) -> str:
    """``concat`` for a template's buffers (macros, ``set`` blocks): measured before joining."""
    parts = list(pieces)
    current_meter().check_size(sum(len(p) for p in parts))
    return "".join(parts)


def _metered_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # (keeps the pass_context/pass_environment marks Jinja reads)
    def run(*args: Any, **kwargs: Any) -> Any:
        meter = current_meter()
        bounded_args(meter, args[1:], kwargs)
        if func.__name__ == "do_format":
            _check_format(args)
        elif func.__name__ == "do_replace":
            _check_replace(meter, *args[1:4])
        result = func(*args, **kwargs)
        return meter.sized(result)

    return run


def _check_format(args: tuple[Any, ...]) -> None:
    """Refuse %-formats whose widths would make a string larger than the budget."""
    text = next((a for a in args if isinstance(a, str)), None)
    if text is None:
        return
    meter = current_meter()
    for match in _FORMAT_WIDTH.finditer(text):
        for group in match.groups():
            if group == "*":
                meter.check_size(meter.budget.max_output_chars + 1)
            elif group:
                meter.check_size(int(group))


def _check_replace(meter: Meter, text: Any = "", old: Any = "", new: Any = "", *_: Any) -> None:
    """Refuse a replacement whose result would exceed the budget, before it is made."""
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        growth = len(new) - len(old)
        if growth > 0:
            count = len(text) + 1 if not old else text.count(old)
            meter.check_size(len(text) + count * growth)


class _MeteredSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, counting the template's work against the current meter."""

    code_generator_class = _MeteredCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    concat = staticmethod(_join_measured)

    def step(self) -> None:
        current_meter().step()

    def sized(self, value: Any) -> Any:
        return current_meter().sized(value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        meter = current_meter()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    meter.check_size(len(seq) * max(times, 0))
        elif operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            if isinstance(left, int | float) and abs(left) > 1:
                meter.check_size(meter.budget.max_output_chars + 1)
        elif operator == "%" and isinstance(left, str):
            _check_format((left,))
        return meter.sized(super().call_binop(context, operator, left, right))

    def call(
        __self,  # (the sandbox's own signature: a keyword argument may be called "self")
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        meter = current_meter()
        bounded_args(meter, args, kwargs)
        if getattr(__obj, "__name__", "") == "replace" and isinstance(
            getattr(__obj, "__self__", None), str
        ):
            _check_replace(meter, __obj.__self__, *args)
        return meter.sized(super().call(__context, __obj, *args, **kwargs))


def _environment() -> ImmutableSandboxedEnvironment:
    env = _MeteredSandbox(
        trim_blocks=True, lstrip_blocks=True, autoescape=False, undefined=jinja2.Undefined
    )
    env.globals.pop("lipsum", None)  # generates as much text as it is asked for
    env.filters["tojson"] = _tojson
    env.filters = {name: _metered_filter(f) for name, f in env.filters.items()}
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
        meter = current_meter()
        pieces: list[str] = []
        try:
            # Piece by piece, so that output is measured as it is written.
            for piece in self._template.generate(context):
                meter.output(len(piece))
                pieces.append(piece)
        except TemplateBudgetError:
            raise
        except TemplateError:
            raise
        except RecursionError as exc:
            raise TemplateError("chat template failed: it nests too deeply") from exc
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc
        return "".join(pieces)

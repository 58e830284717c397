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
import inspect
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
    text_size,
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
    """A filter whose result is estimated before it is made and measured after."""
    signature = inspect.signature(func)

    @functools.wraps(func)  # (keeps the pass_context/pass_environment marks Jinja reads)
    def run(*args: Any, **kwargs: Any) -> Any:
        meter = current_meter()
        bounded_args(meter, args[1:], kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return meter.sized(func(*args, **kwargs))  # (Jinja reports the wrong arguments)
        _estimate_filter(meter, func.__name__, bound.arguments)
        return meter.sized(func(*bound.args, **bound.kwargs))

    return run


def _estimate_filter(meter: Meter, name: str, arguments: dict[str, Any]) -> None:
    """Refuse a filter whose result would exceed the size budget, before it is made: the ones
    that repeat a piece of their input (a separator, an indent, a format's arguments)."""
    limit = meter.budget.max_output_chars
    text = arguments.get("s", arguments.get("value"))
    if name == "do_join":
        items = arguments["value"] = list(arguments["value"])  # (a generator is read once)
        separator = str(arguments.get("d", ""))
        meter.check_size(text_size(items, limit) + len(separator) * len(items))
    elif name == "do_format" and isinstance(text, str):
        values = [*arguments.get("args", ()), *arguments.get("kwargs", {}).values()]
        _check_format(meter, text, values)
    elif name == "do_replace":
        _check_replace(meter, text, arguments.get("old"), arguments.get("new"))
    elif name == "do_indent" and isinstance(text, str):
        width = arguments.get("width", 4)
        indent = len(width) if isinstance(width, str) else int(width)
        meter.check_size(len(text) + (text.count("\n") + 1) * indent)
    elif name == "do_wordwrap" and isinstance(text, str):
        lines = len(text) // max(int(arguments.get("width", 79)), 1) + text.count("\n") + 1
        meter.check_size(len(text) + lines * len(str(arguments.get("wrapstring") or "\n")))


def _check_format(meter: Meter, text: str, values: list[Any], marker: str = "%") -> None:
    """Refuse a format whose result would exceed the budget: widths ("%0999999999d") and
    arguments repeated by its placeholders ("%(a)s%(a)s…", "{0}{0}…")."""
    limit = meter.budget.max_output_chars
    if marker == "%":
        for match in _FORMAT_WIDTH.finditer(text):
            for group in match.groups():
                if group == "*":
                    meter.check_size(limit + 1)
                elif group:
                    meter.check_size(int(group))
    largest = max((text_size(v, limit) for v in values), default=0)
    meter.check_size(len(text) + text.count(marker) * largest)


def _check_replace(meter: Meter, text: Any, old: Any, new: Any) -> None:
    """Refuse a replacement whose result would exceed the budget, before it is made."""
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        growth = len(new) - len(old)
        if growth > 0:
            count = len(text) + 1 if not old else text.count(old)
            meter.check_size(len(text) + count * growth)


def _check_str_method(
    meter: Meter, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """The string methods that repeat something (``"x".join``, ``replace``, ``expandtabs``)."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    limit = meter.budget.max_output_chars
    if name == "replace" and len(args) >= 2:
        _check_replace(meter, owner, args[0], args[1])
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, list | tuple | set | frozenset | dict | str):
            meter.check_size(text_size(items, limit) + len(owner) * len(items))
        else:
            meter.check_size(limit + 1)  # (an iterator cannot be measured before it is read)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            meter.check_size(len(owner) + owner.count("\t") * size)


def _measured_output(value: Any) -> Any:
    return current_meter().sized(value)


class _MeteredSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, counting the template's work against the current meter."""

    code_generator_class = _MeteredCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    concat = staticmethod(_join_measured)

    def step(self) -> None:
        current_meter().step()

    def sized(self, value: Any) -> Any:
        return current_meter().sized(value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format``/``format_map``, refusing what would exceed the budget ("{0}{0}…")."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        by_name = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            values = [*args, *kwargs.values()]
            if by_name and args and isinstance(args[0], dict):
                values = list(args[0].values())
            _check_format(current_meter(), fmt, values, marker="{")
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        meter = current_meter()
        if operator == "*":
            limit = meter.budget.max_output_chars
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    meter.check_size(text_size(seq, limit) * max(times, 0))
        elif operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            if isinstance(left, int | float) and abs(left) > 1:
                meter.check_size(meter.budget.max_output_chars + 1)
        elif operator == "%" and isinstance(left, str):
            if isinstance(right, dict):
                values = list(right.values())
            else:
                values = list(right) if isinstance(right, tuple) else [right]
            _check_format(meter, left, values)
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
        _check_str_method(meter, __obj, args, kwargs)
        return meter.sized(super().call(__context, __obj, *args, **kwargs))


def _environment() -> ImmutableSandboxedEnvironment:
    env = _MeteredSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        undefined=jinja2.Undefined,
        finalize=_measured_output,  # ({{ x }} of a list is measured before it becomes text)
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
        except RecursionError as exc:
            raise TemplateError("invalid chat template: it nests too deeply") from exc

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.source

    @property
    def supports_thinking(self) -> bool:
        return "enable_thinking" in self.source or "reasoning_content" in self.source

    @property
    def supports_insert(self) -> bool:
        return False

    @property
    def default_stops(self) -> tuple[str, ...]:
        return ()  # a GGUF's template ends turns with the tokens its file marks as the end

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None = None,
        think: bool | str | None = None,
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
            # As llama.cpp and Ollama pass it; a level also as gpt-oss's reasoning_effort.
            thinking = think is True or isinstance(think, str)
            context["enable_thinking"] = context["thinking"] = thinking
            if isinstance(think, str):
                context["reasoning_effort"] = think
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

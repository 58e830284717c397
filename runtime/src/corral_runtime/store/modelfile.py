"""Ollama's Modelfile: read into what a model is made of, and written back out.

A Modelfile is untrusted text (a file a user downloaded, a ``Model``'s spec), so reading it is
pure and bounded: a size cap, no NUL bytes, UTF-8 (or UTF-16 with a byte-order mark, as Ollama
accepts), a cap on the number of instructions, and every error names the line it is about
(``line 3: …``). The grammar is Ollama's (``docs/modelfile.md``): one instruction per line,
instruction names in any case, ``#`` comment lines, values bare (the rest of the line),
``"…"`` or ``\"\"\"…\"\"\"`` quoted (a quoted value may span lines and ends at the first line end
that closes it). Parameters are typed and checked here, so a Modelfile that names an unknown
parameter or gives ``num_ctx`` a word fails before anything is written to the store.

``render_modelfile`` writes a Modelfile that reads back into the same ``Modelfile``; it is what
``/api/show`` and ``corral show --modelfile`` print.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A Modelfile is a few kilobytes; the largest part seen in one is a licence (~100 KB).
MAX_MODELFILE_BYTES = 4 * 1024 * 1024
MAX_INSTRUCTIONS = 4096
_INT64 = 2**63

# Ollama's parameters (the ``options`` a Modelfile may set) and the type of each value; ``stop``
# is the one repeatable parameter, each line adding a stop string to the list.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "numa": bool,
    "use_mmap": bool,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}
# Parameters Ollama once had and now skips with a warning; Modelfiles written for older
# versions still carry them, so they are skipped the same way rather than refused.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
    }
)
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
INSTRUCTIONS = ("from", "template", "system", "parameter", "message", "license", "adapter")
# Ollama knows these too; corral cannot do what they ask, so they are refused by name.
UNSUPPORTED_INSTRUCTIONS = {
    "adapter": "adapters are not supported",
    "draft": "draft models are not supported",
    "renderer": "RENDERER is not supported",
    "parser": "PARSER is not supported",
    "requires": "REQUIRES is not supported",
}
_TRUE = frozenset({"1", "t", "true"})
_FALSE = frozenset({"0", "f", "false"})
_LINE_BLANKS = " \t\r"
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER = re.compile(r"[+-]?([0-9]{1,40}\.?[0-9]{0,40}|\.[0-9]{1,40})([eE][+-]?[0-9]{1,4})?")
_WORD = re.compile(r"([^ \t\r]*)[ \t\r]*(.*)", re.DOTALL)


class ModelfileError(ValueError):
    """A Modelfile that cannot be read or written; the message names the line when there is one."""


@dataclass(frozen=True, slots=True)
class Modelfile:
    """What a Modelfile says a model is made of.

    ``base`` is FROM's value as written: a model name or a GGUF path (see ``base_path``).
    ``license`` joins every LICENSE, one per line. ``warnings`` name what was skipped
    (deprecated parameters), for a command to print; they say how the text was read, not what
    the model is, so equality ignores them.
    """

    base: str
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)


# -- reading -----------------------------------------------------------------------------------


def decode_modelfile(raw: bytes) -> str:
    """A Modelfile's bytes as text: UTF-8 (a byte-order mark dropped) or UTF-16 with one."""
    if len(raw) > MAX_MODELFILE_BYTES:
        raise ModelfileError(
            f"the Modelfile is larger than {MAX_MODELFILE_BYTES // (1024 * 1024)} MiB"
        )
    encoding = "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding == "utf-16":
            raise ModelfileError("the Modelfile is not valid UTF-16 text") from exc
        line = raw[: exc.start].count(b"\n") + 1
        raise ModelfileError(f"line {line}: the Modelfile is not valid UTF-8 text") from exc


def parse_modelfile(text: str) -> Modelfile:
    """Read a Modelfile (ModelfileError naming the line for anything it cannot use)."""
    if (
        len(text) > MAX_MODELFILE_BYTES
        or len(text.encode("utf-8", "surrogatepass")) > MAX_MODELFILE_BYTES
    ):
        raise ModelfileError(
            f"the Modelfile is larger than {MAX_MODELFILE_BYTES // (1024 * 1024)} MiB"
        )
    if "\0" in text:
        where = text[: text.index("\0")].count("\n") + 1
        raise ModelfileError(f"line {where}: the Modelfile contains a NUL character")
    # Lines end at LF; a CR before it is a blank at the end of an instruction's line but kept
    # inside a multi-line value, as Ollama keeps it.
    lines = text.split("\n")
    builder = _Builder()
    index = 0
    count = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].lstrip(_LINE_BLANKS)
        if not line or line.startswith("#"):
            index += 1
            continue
        count += 1
        if count > MAX_INSTRUCTIONS:
            raise ModelfileError(f"line {number}: more than {MAX_INSTRUCTIONS} instructions")
        word, rest = _split_word(line)
        instruction = _instruction(word, number)
        key = ""
        if instruction in ("parameter", "message"):
            key, rest = _split_word(rest)
        value, index = _value(rest, lines, index)
        if value is None or (not key and instruction in ("parameter", "message")):
            raise ModelfileError(f"line {number}: {_usage(instruction)}")
        builder.add(instruction, key, value, number)
    return builder.build()


def _split_word(text: str) -> tuple[str, str]:
    match = _WORD.match(text)
    assert match is not None  # the pattern matches any text
    return match[1], match[2]


def _instruction(word: str, number: int) -> str:
    instruction = word.lower()
    if instruction in UNSUPPORTED_INSTRUCTIONS:
        raise ModelfileError(f"line {number}: {UNSUPPORTED_INSTRUCTIONS[instruction]}")
    if instruction not in INSTRUCTIONS:
        known = ", ".join(name.upper() for name in INSTRUCTIONS if name != "adapter")
        raise ModelfileError(f"line {number}: unknown instruction {word!r} (one of {known})")
    return instruction


def _usage(instruction: str) -> str:
    if instruction == "parameter":
        return "PARAMETER needs a name and a value (PARAMETER temperature 0.7)"
    if instruction == "message":
        return "MESSAGE needs a role and a text (MESSAGE user Hello)"
    return f"{instruction.upper()} needs a value"


def _value(rest: str, lines: list[str], index: int) -> tuple[str | None, int]:
    """The value starting at ``rest`` on line ``index`` and the index of the line after it
    (None for a missing bare value). A quoted value runs to the first line end that closes it."""
    for quote in ('"""', '"'):
        if rest.startswith(quote):
            return _quoted(quote, rest, lines, index)
    return (rest.rstrip(_LINE_BLANKS) or None), index + 1


def _quoted(quote: str, first: str, lines: list[str], index: int) -> tuple[str, int]:
    parts = [first]
    end = index
    while True:
        closing = parts[-1].rstrip(_LINE_BLANKS)
        if closing.endswith(quote) and (len(parts) > 1 or len(closing) >= 2 * len(quote)):
            parts[-1] = closing
            return "\n".join(parts)[len(quote) : -len(quote)], end + 1
        end += 1
        if end >= len(lines):
            raise ModelfileError(f"line {index + 1}: the {quote} opened here is never closed")
        parts.append(lines[end])


@dataclass
class _Builder:
    """Collects instructions in file order (later TEMPLATE/SYSTEM/scalar PARAMETER win, as in
    Ollama; LICENSE, MESSAGE and stop accumulate)."""

    base: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    from_line: int = 0

    def add(self, instruction: str, key: str, value: str, number: int) -> None:
        if instruction == "from":
            if self.base is not None:
                raise ModelfileError(
                    f"line {number}: a second FROM (the first is on line {self.from_line}); "
                    "a model is built on one base"
                )
            self.base, self.from_line = value, number
        elif instruction == "template":
            self.template = value
        elif instruction == "system":
            self.system = value
        elif instruction == "license":
            self.licenses.append(value)
        elif instruction == "message":
            role = key.lower()
            if role not in MESSAGE_ROLES:
                raise ModelfileError(
                    f"line {number}: message role {key!r} is not one of {', '.join(MESSAGE_ROLES)}"
                )
            self.messages.append({"role": role, "content": value})
        else:
            self._parameter(key, value, number)

    def _parameter(self, name: str, text: str, number: int) -> None:
        if name in DEPRECATED_PARAMETERS:
            self.warnings.append(f"line {number}: parameter {name} is deprecated and was skipped")
            return
        if name not in PARAMETER_TYPES:
            raise ModelfileError(f"line {number}: unknown parameter {name!r}")
        try:
            value = parameter_value(name, text)
        except ValueError as exc:
            raise ModelfileError(f"line {number}: {exc}") from exc
        if name == "stop":
            self.parameters.setdefault("stop", []).append(value)
        else:
            self.parameters[name] = value

    def build(self) -> Modelfile:
        if self.base is None:
            raise ModelfileError("no FROM line: a Modelfile must name the model it builds on")
        return Modelfile(
            base=self.base,
            template=self.template,
            system=self.system,
            parameters=self.parameters,
            messages=self.messages,
            license="\n".join(self.licenses) if self.licenses else None,
            warnings=tuple(self.warnings),
        )


def parameter_value(name: str, text: str) -> Any:
    """One PARAMETER's text as its type (a stop string stays text); ValueError saying why not."""
    kind = PARAMETER_TYPES[name]
    if kind is list:
        return text
    if kind is bool:
        word = text.lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"parameter {name} takes true or false, not {text!r}")
    if kind is int:
        if _INTEGER.fullmatch(text) and -_INT64 <= int(text) < _INT64:
            return int(text)
        raise ValueError(f"parameter {name} takes an integer, not {text!r}")
    number = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(number):
        raise ValueError(f"parameter {name} takes a number, not {text!r}")
    return number


def base_path(base: str, directory: Path) -> Path:
    """Where FROM's value would be as a file: ``~`` expanded, relative to the Modelfile's
    directory (Ollama's rule). Whether it is a file or a model name is for the caller to see."""
    path = Path(base).expanduser()
    return path if path.is_absolute() else directory / path


# -- writing -----------------------------------------------------------------------------------


def render_modelfile(modelfile: Modelfile, *, comments: Iterable[str] = ()) -> str:
    """The Modelfile text that reads back (``parse_modelfile``) into ``modelfile``, after
    ``comments`` as ``#`` lines and a blank one. ModelfileError for a value no quoting can carry."""
    lines = [f"# {comment}" for comment in comments]
    if lines:
        lines.append("")
    lines.append(f"FROM {_quoted_text(modelfile.base, 'FROM')}")
    if modelfile.template is not None:
        lines.append(f"TEMPLATE {_quoted_text(modelfile.template, 'TEMPLATE')}")
    if modelfile.system is not None:
        lines.append(f"SYSTEM {_quoted_text(modelfile.system, 'SYSTEM')}")
    lines += parameter_lines(modelfile.parameters)
    for message in modelfile.messages:
        role, content = message.get("role", ""), message.get("content", "")
        lines.append(f"MESSAGE {role} {_quoted_text(content, 'MESSAGE')}")
    if modelfile.license is not None:
        lines.append(f"LICENSE {_quoted_text(modelfile.license, 'LICENSE')}")
    return "\n".join(lines) + "\n"


def parameter_lines(parameters: dict[str, Any]) -> list[str]:
    """``PARAMETER name value`` lines, by name, one per stop string."""
    return [
        f"PARAMETER {name} {_quoted_text(parameter_text(item), 'PARAMETER')}"
        for name in sorted(parameters)
        for item in _items(parameters[name])
    ]


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def parameter_text(value: Any) -> str:
    """A parameter's value as Ollama writes one (Go's ``%v``): ``true``, ``0`` for a whole float
    (not Python's ``0.0``), ``0.9``, text as it is. Reads back as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return value if isinstance(value, str) else str(value)


def _quoted_text(value: str, instruction: str) -> str:
    """``value`` bare where it reads back as itself, else in the first quoting that does."""
    bare = value.strip(_LINE_BLANKS) == value and not value.startswith(('"', "#"))
    if value and bare and "\n" not in value and "\r" not in value:
        return value
    for quote in ('"""', '"'):
        candidate = f"{quote}{value}{quote}"
        lines = candidate.split("\n")
        try:
            read, after = _quoted(quote, lines[0], lines, 0)
        except ModelfileError:
            continue
        if read == value and after == len(lines):
            return candidate
    raise ModelfileError(f"{instruction}'s value cannot be written in a Modelfile: {value[:40]!r}")

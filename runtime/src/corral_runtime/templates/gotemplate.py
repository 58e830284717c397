"""An interpreter for the subset of Go's text/template that Ollama template layers use.

Supported: text with ``{{- ``/`` -}}`` trimming, comments, ``if``/``else if``/``else``,
``range`` (with one or two variables, ``else``, ``break``, ``continue``), ``with``/``else with``,
variables (``$``, ``$x := …``, ``$x = …``), field chains on dot, variables and parenthesised
pipelines, pipelines with ``|``, literals, and the functions ``eq ne lt le gt ge and or not len
index slice json print printf println currentDate``. ``define``/``template``/``block`` are
rejected with a clear error.

Data is plain Python: dicts (fields by key), lists, strings, numbers, booleans and None. Printing
a dict or list writes JSON, as Ollama's types do when a template prints a tool or arguments; a
``Record`` is a dict of Go field names that prints (and ``json``-encodes) as its own JSON form.
Templates are data, never code: nothing here can reach Python attributes or call Python objects.
A render counts its work against the current budget (``budget.py``): each node run and each range
iteration is a step, output and every string a function builds are measured, so a template with
nested ranges or a doubling variable stops with ``TemplateBudgetError``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral_runtime.templates.budget import Meter, current_meter

MAX_RANGE_STEPS = 1_000_000


class TemplateError(ValueError):
    """A template that cannot be parsed, or that fails while it runs."""


# -- lexing --------------------------------------------------------------------------------------

_COMMENT = re.compile(r"\s*/\*.*?\*/\s*", re.DOTALL)
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:\\.|[^'\\])')
  | (?P<num>-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?))
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<declare>:=)
  | (?P<punct>[=|(),])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str


def _lex_items(source: str) -> list[tuple[str, str]]:
    """Split a template into ("text", …) and ("action", …) items, applying trim markers.

    A plain scan, linear in the template's length: a regular expression searching for each
    ``{{``'s ``}}`` rescans the rest of the text from every ``{{`` (a template of 20,000 ``{{``
    took 35 s, holding the interpreter all the while).
    """
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while (start := source.find("{{", pos)) >= 0:
        end = source.find("}}", start + 2)
        if end < 0:
            raise TemplateError("unclosed action: '{{' without '}}'")
        text = source[pos:start]
        body = source[start + 2 : end]
        trim_left = len(body) >= 2 and body[0] == "-" and body[1].isspace()
        if trim_left:
            body = body[2:]
        trim_right = len(body) >= 2 and body[-1] == "-" and body[-2].isspace()
        if trim_right:
            body = body[:-2]
        if trim_next:
            text = text.lstrip()
        if trim_left:
            text = text.rstrip()
        if text:
            items.append(("text", text))
        trim_next = trim_right
        pos = end + 2
        if _COMMENT.fullmatch(body):
            continue
        items.append(("action", body))
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip()
    if tail:
        items.append(("text", tail))
    return items


def _tokenize(action: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(action):
        match = _TOKEN.match(action, pos)
        if match is None:
            raise TemplateError(f"unexpected {action[pos : pos + 10]!r} in action {{{{{action}}}}}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group()))
        pos = match.end()
    return tokens


# -- the tree ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Operand:
    kind: str  # "field", "var", "dot", "lit", "ident", "pipe"
    value: Any = None
    chain: tuple[str, ...] = ()


@dataclass(slots=True)
class _Pipeline:
    decl: list[str] = field(default_factory=list)
    assign: bool = False
    cmds: list[list[_Operand]] = field(default_factory=list)


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Action:
    pipe: _Pipeline


@dataclass(slots=True)
class _Branch:
    kind: str  # "if" or "with"
    pipe: _Pipeline
    body: list[Any]


@dataclass(slots=True)
class _Cond:
    branches: list[_Branch]
    else_body: list[Any] | None


@dataclass(slots=True)
class _Range:
    pipe: _Pipeline
    body: list[Any]
    else_body: list[Any] | None


@dataclass(slots=True)
class _Loop:
    word: str  # "break" or "continue"


class _Parser:
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        self.pos = 0

    def parse(self) -> list[Any]:
        nodes, stop = self._block()
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def _block(self) -> tuple[list[Any], tuple[str, list[_Tok]] | None]:
        """Parse nodes until end/else; returns them and the stopping keyword with its tokens."""
        nodes: list[Any] = []
        while self.pos < len(self.items):
            kind, body = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(_Text(body))
                continue
            toks = _tokenize(body)
            if not toks:
                raise TemplateError("empty action {{}}")
            word = toks[0].text if toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                return nodes, (word, toks[1:])
            if word in ("if", "with"):
                nodes.append(self._conditional(word, toks[1:]))
            elif word == "range":
                nodes.append(self._range(toks[1:]))
            elif word in ("break", "continue"):
                nodes.append(_Loop(word))
            elif word in ("define", "template", "block"):
                raise TemplateError(f"{{{{{word}}}}} is not supported in template layers")
            else:
                nodes.append(_Action(_parse_pipeline(toks)))
        return nodes, None

    def _conditional(self, word: str, toks: list[_Tok]) -> _Cond:
        branches = [_Branch(word, _parse_pipeline(toks), [])]
        while True:
            body, stop = self._block()
            branches[-1].body = body
            if stop is None:
                raise TemplateError(f"unterminated {{{{{word}}}}}: missing {{{{end}}}}")
            keyword, rest = stop
            if keyword == "end":
                return _Cond(branches, None)
            if rest and rest[0].kind == "ident" and rest[0].text in ("if", "with"):
                branches.append(_Branch(rest[0].text, _parse_pipeline(rest[1:]), []))
                continue
            else_body, stop = self._block()
            if stop is None or stop[0] != "end":
                raise TemplateError(f"{{{{else}}}} of {{{{{word}}}}} must end with {{{{end}}}}")
            return _Cond(branches, else_body)

    def _range(self, toks: list[_Tok]) -> _Range:
        pipe = _parse_pipeline(toks)
        if len(pipe.decl) > 2:
            raise TemplateError("range declares at most two variables")
        body, stop = self._block()
        if stop is None:
            raise TemplateError("unterminated {{range}}: missing {{end}}")
        if stop[0] == "end":
            return _Range(pipe, body, None)
        else_body, stop = self._block()
        if stop is None or stop[0] != "end":
            raise TemplateError("{{else}} of {{range}} must end with {{end}}")
        return _Range(pipe, body, else_body)


def _parse_pipeline(toks: list[_Tok]) -> _Pipeline:
    pipe = _Pipeline()
    # Declarations: "$x :=", "$i, $e :=", or assignment "$x =".
    for i, tok in enumerate(toks):
        if tok.kind == "declare" or (tok.kind == "punct" and tok.text == "="):
            names = [t for t in toks[:i] if not (t.kind == "punct" and t.text == ",")]
            if names and all(t.kind == "var" and "." not in t.text for t in names):
                pipe.decl = [t.text for t in names]
                pipe.assign = tok.kind != "declare"
                toks = toks[i + 1 :]
            break
        if tok.kind != "var" and tok.text != ",":
            break
    pos = _parse_commands(toks, 0, pipe)
    if pos != len(toks):
        raise TemplateError(f"unexpected {toks[pos].text!r}")
    if not pipe.cmds:
        raise TemplateError("missing value in action")
    return pipe


def _parse_commands(toks: list[_Tok], pos: int, pipe: _Pipeline) -> int:
    """Parse ``cmd | cmd …`` into ``pipe`` up to a ')' or the end; return the position."""
    cmd: list[_Operand] = []
    while pos < len(toks):
        tok = toks[pos]
        if tok.kind == "punct" and tok.text == "|":
            if not cmd:
                raise TemplateError("missing command before '|'")
            pipe.cmds.append(cmd)
            cmd = []
            pos += 1
            continue
        if tok.kind == "punct" and tok.text == ")":
            break
        operand, pos = _parse_operand(toks, pos)
        cmd.append(operand)
    if cmd:
        pipe.cmds.append(cmd)
    elif pipe.cmds:
        raise TemplateError("missing command after '|'")
    return pos


def _parse_operand(toks: list[_Tok], pos: int) -> tuple[_Operand, int]:
    tok = toks[pos]
    pos += 1
    if tok.kind == "field":
        return _Operand("field", chain=tuple(tok.text.split(".")[1:])), pos
    if tok.kind == "var":
        name, *fields = tok.text.split(".")
        return _Operand("var", name, tuple(fields)), pos
    if tok.kind == "dot":
        return _Operand("dot"), pos
    if tok.kind in ("str", "raw", "char", "num"):
        return _Operand("lit", _literal(tok)), pos
    if tok.kind == "ident":
        constants = {"true": True, "false": False, "nil": None}
        if tok.text in constants:
            return _Operand("lit", constants[tok.text]), pos
        if tok.text not in FUNCTIONS and tok.text not in ("and", "or"):
            raise TemplateError(f'function "{tok.text}" not defined')
        return _Operand("ident", tok.text), pos
    if tok.kind == "punct" and tok.text == "(":
        inner = _Pipeline()
        pos = _parse_commands(toks, pos, inner)
        if pos >= len(toks) or toks[pos].text != ")":
            raise TemplateError("unclosed '('")
        pos += 1
        chain: tuple[str, ...] = ()
        if pos < len(toks) and toks[pos].kind == "field":
            chain = tuple(toks[pos].text.split(".")[1:])
            pos += 1
        return _Operand("pipe", inner, chain), pos
    raise TemplateError(f"unexpected {tok.text!r} in command")


def _literal(tok: _Tok) -> Any:
    if tok.kind == "raw":
        return tok.text[1:-1]
    if tok.kind == "str":
        try:
            return json.loads(tok.text)
        except ValueError as exc:
            raise TemplateError(f"bad string literal {tok.text}") from exc
    if tok.kind == "char":
        return ord(json.loads('"' + tok.text[1:-1].replace('"', '\\"') + '"'))
    text = tok.text
    if text.lower().lstrip("-").startswith("0x"):
        return int(text, 16)
    return float(text) if any(c in text for c in ".eE") else int(text)


# -- values and functions ------------------------------------------------------------------------


class Record(dict[str, Any]):
    """Go-style fields (``.Function.Name``) that print as the wire JSON (``{"function": …}``)."""

    def __init__(self, fields: dict[str, Any], json_form: Any) -> None:
        super().__init__(fields)
        self.json_form = json_form


def _to_json(value: Any) -> str:
    def plain(v: Any) -> Any:
        if isinstance(v, Record):
            return v.json_form
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))


def truthy(value: Any) -> bool:
    """Go's notion of true: not false, 0, nil, or an empty string, slice or map."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def to_text(value: Any) -> str:
    """Print a value the way Ollama's templates see it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list | tuple):
        return _to_json(value)
    return str(value)


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("eq: missing argument for comparison")
    return any(_basic(first) == _basic(other) for other in others)


def _basic(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        raise TemplateError("eq/ne: cannot compare non-basic values")
    return value


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if type(a) is not type(b) and not (
            isinstance(a, int | float) and isinstance(b, int | float)
        ):
            raise TemplateError("incompatible types for comparison")
        return op(a, b)

    return compare


def _len(value: Any) -> int:
    if isinstance(value, str | list | tuple | dict):
        return len(value)
    raise TemplateError(f"len of {type(value).__name__}")


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list | tuple | str) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise TemplateError(f"index out of range: {key}")
            value = value[key]
        else:
            raise TemplateError(f"cannot index {type(value).__name__} with {key!r}")
    return value


def _slice(value: Any, *bounds: Any) -> Any:
    if not isinstance(value, str | list | tuple):
        raise TemplateError(f"cannot slice {type(value).__name__}")
    if len(bounds) > 2 or not all(isinstance(b, int) for b in bounds):
        raise TemplateError("slice takes up to two integer bounds")
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(value)
    if not 0 <= start <= stop <= len(value):
        raise TemplateError(f"slice bounds out of range [{start}:{stop}]")
    return value[start:stop]


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise TemplateError("printf: format must be a string")
    values = iter(args)

    def substitute(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        value = next(values, None)
        if verb == "q":
            return json.dumps(to_text(value), ensure_ascii=False)
        if verb == "d" and isinstance(value, int | float):
            return str(int(value))
        return to_text(value)

    return re.sub(r"%([%vsdqt])", substitute, fmt)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "not": lambda a: not truthy(a),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "json": _to_json,
    "print": lambda *a: "".join(to_text(v) for v in a),
    "println": lambda *a: " ".join(to_text(v) for v in a) + "\n",
    "printf": _printf,
    "currentDate": lambda: datetime.date.today().isoformat(),
}


# -- execution -----------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    def __init__(self, root: Any, meter: Meter) -> None:
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.out: list[str] = []
        self.meter = meter

    def write(self, text: str) -> None:
        self.meter.output(len(text))
        self.out.append(text)

    def lookup(self, name: str) -> Any:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        raise TemplateError(f"undefined variable: {name}")

    def assign(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise TemplateError(f"undefined variable: {name}")


def _field(value: Any, chain: tuple[str, ...]) -> Any:
    for name in chain:
        if isinstance(value, dict):
            value = value.get(name)
        elif value is None:
            raise TemplateError(f"nil pointer evaluating .{name}")
        else:
            raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")
    return value


def _eval_operand(op: _Operand, dot: Any, state: _State) -> Any:
    if op.kind == "field":
        return _field(dot, op.chain)
    if op.kind == "var":
        return _field(state.lookup(op.value), op.chain)
    if op.kind == "dot":
        return dot
    if op.kind == "lit":
        return op.value
    if op.kind == "pipe":
        return _field(_eval_pipeline(op.value, dot, state), op.chain)
    if op.kind == "ident":
        return _call(op.value, [], dot, state, None, has_final=False)
    raise TemplateError(f"bad operand {op.kind}")


def _call(
    name: str, args: list[_Operand], dot: Any, state: _State, final: Any, *, has_final: bool
) -> Any:
    if name in ("and", "or"):
        # Short-circuit, returning the deciding value, as Go 1.18+ does.
        operands: list[_Operand | None] = [*args, None] if has_final else list(args)
        if not operands:
            raise TemplateError(f"{name}: missing arguments")
        value: Any = None
        for operand in operands:
            value = final if operand is None else _eval_operand(operand, dot, state)
            if truthy(value) != (name == "and"):
                return value
        return value
    values = [_eval_operand(a, dot, state) for a in args]
    if has_final:
        values.append(final)
    try:
        result = FUNCTIONS[name](*values)
    except TypeError as exc:
        raise TemplateError(f"wrong number of args for {name}") from exc
    # A variable fed back into print/printf can double on every iteration: measure what is built.
    return state.meter.sized(result)


def _eval_command(cmd: list[_Operand], dot: Any, state: _State, final: Any, has_final: bool) -> Any:
    head = cmd[0]
    if head.kind == "ident":
        return _call(head.value, cmd[1:], dot, state, final, has_final=has_final)
    if len(cmd) > 1 or has_final:
        raise TemplateError("can't give argument to non-function")
    return _eval_operand(head, dot, state)


def _eval_pipeline(pipe: _Pipeline, dot: Any, state: _State) -> Any:
    value: Any = None
    for i, cmd in enumerate(pipe.cmds):
        value = _eval_command(cmd, dot, state, value, has_final=i > 0)
    if pipe.decl and len(pipe.decl) == 1:
        if pipe.assign:
            state.assign(pipe.decl[0], value)
        else:
            state.vars.append((pipe.decl[0], value))
    return value


def _iterate(value: Any) -> Iterator[tuple[Any, Any]]:
    if value is None:
        return iter(())
    if isinstance(value, list | tuple):
        return iter(enumerate(value))
    if isinstance(value, dict):
        return iter((k, value[k]) for k in sorted(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return iter((i, i) for i in range(value))
    raise TemplateError(f"range can't iterate over {type(value).__name__}")


def _run(nodes: list[Any], dot: Any, state: _State) -> None:
    for node in nodes:
        state.meter.step()
        if isinstance(node, _Text):
            state.write(node.text)
        elif isinstance(node, _Action):
            value = _eval_pipeline(node.pipe, dot, state)
            if not node.pipe.decl:
                state.write(to_text(value))
        elif isinstance(node, _Cond):
            _run_cond(node, dot, state)
        elif isinstance(node, _Range):
            _run_range(node, dot, state)
        elif isinstance(node, _Loop):
            raise _Break() if node.word == "break" else _Continue()


def _run_cond(node: _Cond, dot: Any, state: _State) -> None:
    mark = len(state.vars)
    try:
        for branch in node.branches:
            pipe = branch.pipe
            value = _eval_pipeline(_Pipeline(cmds=pipe.cmds), dot, state)
            if pipe.decl:
                state.vars.append((pipe.decl[0], value))
            if truthy(value):
                _run(branch.body, value if branch.kind == "with" else dot, state)
                return
        if node.else_body is not None:
            _run(node.else_body, dot, state)
    finally:
        del state.vars[mark:]


def _run_range(node: _Range, dot: Any, state: _State) -> None:
    mark = len(state.vars)
    try:
        collection = _eval_pipeline(_Pipeline(cmds=node.pipe.cmds), dot, state)
        ran = False
        for steps, (key, item) in enumerate(_iterate(collection)):
            if steps >= MAX_RANGE_STEPS:
                raise TemplateError("range ran too long")
            state.meter.step()
            ran = True
            del state.vars[mark:]
            if len(node.pipe.decl) == 1:
                state.vars.append((node.pipe.decl[0], item))
            elif len(node.pipe.decl) == 2:
                state.vars.append((node.pipe.decl[0], key))
                state.vars.append((node.pipe.decl[1], item))
            try:
                _run(node.body, item, state)
            except _Continue:
                continue
            except _Break:
                break
        if not ran and node.else_body is not None:
            _run(node.else_body, dot, state)
    finally:
        del state.vars[mark:]


class GoTemplate:
    """A parsed template; ``render(data)`` may be called any number of times."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._nodes = _Parser(_lex_items(source)).parse()
        except RecursionError as exc:
            raise TemplateError("template nests too deeply") from exc

    def render(self, data: Any) -> str:
        """Render within the current budget (``metered``), raising TemplateBudgetError beyond."""
        state = _State(data, current_meter())
        try:
            _run(self._nodes, data, state)
        except (_Break, _Continue) as exc:
            raise TemplateError("break/continue outside range") from exc
        except RecursionError as exc:
            raise TemplateError("template nests too deeply") from exc
        return "".join(state.out)

    def references(self, name: str) -> bool:
        """Whether the template mentions a field or variable chain element ``name``."""
        return re.search(rf"\.{re.escape(name)}\b", self.source) is not None

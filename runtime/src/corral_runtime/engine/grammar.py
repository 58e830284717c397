"""JSON schemas as GBNF grammars, with what llama-cpp-python's converter leaves out.

Properties keep the schema's order (the converter follows the order it is given; a "reason
first, answer last" schema must produce its reasoning first, as Ollama's does), and numeric
bounds hold: ``minimum``/``maximum`` and their exclusive forms on integers become a grammar of
exactly the integers in range, and on numbers a grammar of in-range values whose integer part
alone decides the bounds (integers in range, and non-negative ones with a fraction below the
upper bound), so every value sampled satisfies the schema.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Beyond this many digits a bound is no bound: llama.cpp's own integer rule stops at 16 digits.
MAX_DIGITS = 16
LARGEST = 10**MAX_DIGITS - 1
_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def integer_bounds(schema: dict[str, Any]) -> tuple[int, int] | None:
    """The inclusive integer range a numeric schema allows (None if it sets no bound).
    ``exclusiveMinimum``/``exclusiveMaximum`` are numbers, or (JSON Schema draft 4) true to
    make ``minimum``/``maximum`` exclusive.

    Raises ValueError for bounds that are no numbers or leave no integer."""
    bounds = {k: schema[k] for k in _BOUND_KEYS if k in schema}
    for side in ("Minimum", "Maximum"):
        flag = bounds.get(f"exclusive{side}")
        if isinstance(flag, bool):  # draft 4: a flag on minimum/maximum
            del bounds[f"exclusive{side}"]
            plain = bounds.get(side.lower())
            if flag and plain is not None:
                bounds[f"exclusive{side}"] = bounds.pop(side.lower())
    if not bounds:
        return None
    low, high = -LARGEST, LARGEST
    for key, value in bounds.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} must be a finite number")
        if key == "minimum":
            low = max(low, math.ceil(value))
        elif key == "exclusiveMinimum":
            low = max(low, math.floor(value) + 1)
        elif key == "maximum":
            high = min(high, math.floor(value))
        else:
            high = min(high, math.ceil(value) - 1)
    if low > high:
        raise ValueError(f"the bounds {bounds} leave no integer; bounded numbers need one in range")
    return max(low, -LARGEST), min(high, LARGEST)


def _same_length(low: str, high: str) -> str:
    """GBNF for the decimal strings of one length from ``low`` to ``high`` (``low <= high``)."""
    if low == high:
        return f'"{low}"'
    if len(low) == 1:
        return f"[{low}-{high}]"
    rest = len(low) - 1
    if low[0] == high[0]:
        return f'"{low[0]}" ({_same_length(low[1:], high[1:])})'
    any_rest = f"[0-9]{{{rest}}}"
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return f"[{low[0]}-{high[0]}] {any_rest}"
    parts = [f'"{low[0]}" ({_same_length(low[1:], "9" * rest)})']
    first, last = int(low[0]) + 1, int(high[0]) - 1
    if first <= last:
        parts.append(f"[{first}-{last}] {any_rest}")
    parts.append(f'"{high[0]}" ({_same_length("0" * rest, high[1:])})')
    return " | ".join(parts)


def natural_range(low: int, high: int) -> str:
    """GBNF for the non-negative integers from ``low`` to ``high`` in JSON's form (no leading
    zeros)."""
    assert 0 <= low <= high
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 0 if digits == 1 else 10 ** (digits - 1))
        end = min(high, 10**digits - 1)
        if start <= end:
            parts.append(f"({_same_length(str(start), str(end))})")
    return " | ".join(parts)


def integer_range(low: int, high: int) -> str:
    """GBNF for the integers from ``low`` to ``high``, negative ones included."""
    assert low <= high
    parts = []
    if low < 0:
        parts.append(f'"-" ({natural_range(max(1, -high), -low)})')
    if high >= 0:
        parts.append(f"({natural_range(max(0, low), high)})")
    return " | ".join(parts)


def number_range(low: int, high: int) -> str:
    """GBNF for numbers whose value lies in [low, high] by their integer part alone: every
    integer in range, and with a fraction the non-negative integer parts below ``high``."""
    whole = integer_range(low, high)
    if high - 1 < max(low, 0):
        return whole
    return f'({natural_range(max(low, 0), high - 1)}) "." [0-9]{{1,{MAX_DIGITS}}} | {whole}'


def _converter_class() -> type[Any]:
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class BoundedConverter(SchemaConverter):
        def visit(self, schema: Any, name: str) -> Any:
            kind = schema.get("type") if isinstance(schema, dict) else None
            if kind in ("integer", "number") and not ({"enum", "const", "$ref"} & set(schema)):
                bounds = integer_bounds(schema)
                if bounds is not None:
                    build = integer_range if kind == "integer" else number_range
                    rule_name = f"{name}-" if name in RESERVED_NAMES else name or "root"
                    return self._add_rule(rule_name, f"({build(*bounds)}) space")  # type: ignore[no-untyped-call]
            return super().visit(schema, name)  # type: ignore[no-untyped-call]

    return BoundedConverter


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """The grammar of the JSON values ``schema`` allows, properties in the schema's order.

    Raises ValueError (or the converter's own exceptions) for a schema it cannot express."""
    converter = _converter_class()(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    # A round trip through JSON: the converter edits what it resolves, never the caller's dict.
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
    converter.visit(resolved, "")
    return str(converter.format_grammar())

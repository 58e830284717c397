"""JSON schemas as grammars: the schema's property order, and numeric bounds that hold."""

from __future__ import annotations

import random
import re

import pytest

from corral_runtime.engine.grammar import (
    LARGEST,
    integer_bounds,
    integer_range,
    number_range,
    schema_to_gbnf,
)
from corral_runtime.engine.sampling import GrammarCache
from corral_runtime.engine.types import InvalidRequestError, OutputFormat

pytestmark = pytest.mark.unit


def as_regex(gbnf: str) -> re.Pattern[str]:
    """The range rules use only digit literals, classes, repetitions and groups: as a regular
    expression they are the same language once quotes and spaces go."""
    return re.compile(gbnf.replace('"', "").replace(" ", "").replace(".", r"\."))


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 120), (1, 9), (-15, 7), (-300, -17), (5, 5), (0, 0), (10, 99), (99, 1000), (-1, 0)],
)
def test_integer_range_is_exactly_the_integers_in_range(low: int, high: int) -> None:
    pattern = as_regex(integer_range(low, high))
    for value in range(low - 150, high + 150):
        assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), value
    assert not pattern.fullmatch("007") and not pattern.fullmatch("-0")


def test_integer_range_holds_for_random_wide_ranges() -> None:
    rng = random.Random(7)
    for _ in range(40):
        low = rng.randint(-(10**6), 10**6)
        high = low + rng.randint(0, 10**5)
        pattern = as_regex(integer_range(low, high))
        for value in [low, high, low - 1, high + 1, *(rng.randint(low, high) for _ in range(50))]:
            assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), (low, high, value)


def test_number_range_values_satisfy_the_bounds() -> None:
    pattern = as_regex(number_range(0, 120))
    for text in ("0", "0.5", "119.999", "120", "57.25"):
        assert pattern.fullmatch(text), text
    for text in ("120.5", "121", "-0.5", "-1", "1000000000000000"):
        assert not pattern.fullmatch(text), text


def test_bounds_read_exclusive_and_fractional_limits() -> None:
    assert integer_bounds({"type": "integer"}) is None
    assert integer_bounds({"minimum": 0, "maximum": 120}) == (0, 120)
    assert integer_bounds({"exclusiveMinimum": 0, "exclusiveMaximum": 10}) == (1, 9)
    assert integer_bounds({"minimum": 0.5, "maximum": 2.5}) == (1, 2)
    # Draft 4's flags make minimum and maximum exclusive.
    assert integer_bounds({"minimum": 0, "exclusiveMinimum": True, "maximum": 10}) == (1, 10)
    assert integer_bounds({"maximum": 10, "exclusiveMaximum": True}) == (-LARGEST, 9)
    assert integer_bounds({"exclusiveMaximum": False}) is None
    with pytest.raises(ValueError, match="no integer"):
        integer_bounds({"minimum": 3, "maximum": 2})
    with pytest.raises(ValueError, match="finite"):
        integer_bounds({"maximum": "120"})


REASON_FIRST = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "answer": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["reasoning", "answer"],
}


def test_the_grammar_keeps_the_schema_property_order() -> None:
    root = next(
        line for line in schema_to_gbnf(REASON_FIRST).splitlines() if line.startswith("root")
    )
    assert root.index("reasoning-kv") < root.index("answer-kv")
    cached = GrammarCache().gbnf(OutputFormat(schema=REASON_FIRST))
    root = next(line for line in cached.splitlines() if line.startswith("root"))
    assert root.index("reasoning-kv") < root.index("answer-kv")


def test_the_grammar_bounds_an_integer_property() -> None:
    grammar = GrammarCache().gbnf(OutputFormat(schema=REASON_FIRST))
    rule = next(line for line in grammar.splitlines() if line.startswith("answer ::="))
    pattern = as_regex(rule.removeprefix("answer ::=").removesuffix("space"))
    assert pattern.fullmatch("120") and pattern.fullmatch("0")
    assert not pattern.fullmatch("121") and not pattern.fullmatch("1000000000000000")


def test_bounds_that_leave_nothing_are_an_invalid_schema() -> None:
    with pytest.raises(InvalidRequestError, match="invalid JSON schema"):
        GrammarCache().gbnf(OutputFormat(schema={"type": "integer", "minimum": 5, "maximum": 1}))

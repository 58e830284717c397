"""Every chart value is documented twice: a comment above it in values.yaml and a description
in values.schema.json, and values.yaml itself satisfies the schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from devstack.stack import merge
from tests.chart.chart import CHART, CUSTOM_VALUES

pytestmark = pytest.mark.chart

VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):")


def undocumented_keys(text: str) -> list[str]:
    """Keys of values.yaml (outside list items) whose previous line is not a comment."""
    missing = []
    list_indent: int | None = None
    previous = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            previous = ""
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None and indent <= list_indent and not stripped.startswith("- "):
            list_indent = None
        if stripped.startswith("- ") and list_indent is None:
            list_indent = indent
        match = KEY_LINE.match(line)
        if match and list_indent is None and not previous.startswith("#"):
            missing.append(f"line {number}: {match['key']}")
        previous = stripped
    return missing


def test_undocumented_keys_are_found() -> None:
    text = "# about a\na: 1\nb:\n  # about c\n  c: [1]\nd:\n  - e: 1\n    f: 2\n"
    assert undocumented_keys(text) == ["line 3: b", "line 6: d"]


def test_every_value_has_a_comment() -> None:
    assert undocumented_keys(VALUES.read_text()) == []


def _paths(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in values.items():
        yield (*prefix, key)
        if isinstance(value, Mapping):
            yield from _paths(value, (*prefix, key))


def _schema_at(schema: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    node = schema
    for key in path:
        properties = node.get("properties") or {}
        if key in properties:
            node = properties[key]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            raise AssertionError(f"{'.'.join(path)} is not in values.schema.json")
    return node


def test_every_value_is_in_the_schema_with_a_description() -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(VALUES.read_text())
    for path in _paths(values):
        node = _schema_at(schema, path)
        assert node.get("description"), f"{'.'.join(path)} has no description in the schema"


@pytest.mark.parametrize("values_file", [VALUES, CUSTOM_VALUES], ids=["default", "custom"])
def test_values_satisfy_the_schema(values_file: Any) -> None:
    # helm merges a values file over the defaults (maps merge, lists and scalars replace).
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    merged = merge(yaml.safe_load(VALUES.read_text()), yaml.safe_load(values_file.read_text()))
    jsonschema.Draft7Validator(schema).validate(merged)

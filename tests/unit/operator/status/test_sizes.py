"""Sizes in a Model's status as people read them: Ollama's decimal units, cut at unit edges."""

from __future__ import annotations

import pytest

from corral_operator.status.sizes import format_progress, format_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (999_999, "999 KB"),
        (1_000_000, "1 MB"),
        (9_960_000, "10 MB"),
        (12_345_678, "12 MB"),
        (253_113_024, "253 MB"),
        (291_000_000, "291 MB"),
        (999_999_999, "999 MB"),
        (1_000_000_000, "1 GB"),
        (4_920_000_000, "4.9 GB"),
        (4_960_000_000, "5 GB"),
        (12_000_000_000_000, "12 TB"),
        (1_500_000_000_000_000, "1500 TB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("completed", "total", "text"),
    [
        (12_000_000, 291_000_000, "12 MB / 291 MB (4%)"),
        (0, 291_000_000, "0 B / 291 MB (0%)"),
        # Cut, not rounded: a pull one byte short of its total is not done.
        (290_999_999, 291_000_000, "290 MB / 291 MB (99%)"),
        (291_000_000, 291_000_000, "291 MB / 291 MB (100%)"),
        (0, 0, "0 B / 0 B"),
    ],
)
def test_format_progress(completed: int, total: int, text: str) -> None:
    assert format_progress(completed, total) == text

"""Durations, sizes, hosts and timestamps as the cluster commands read and print them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral_operator.api import parse_time
from corral_operator.cli.values import (
    format_duration,
    format_size,
    normalize_host,
    parse_duration,
    parse_option,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300),
        ("0", 0),
        ("45s", 45),
        ("5m", 300),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 2M ", 120),
        ("1m0.6s", 61),
        ("1500ms", 2),  # Ollama's spellings, as the requests' keep_alive takes them
        ("1h0m0s", 3600),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "-5m", "5x", "m", "5m junk", "1d", "nan", "inf"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1", "-5m", "-1s"])
def test_a_negative_bound_is_no_bound(text: str) -> None:
    assert parse_duration(text, forever=True) == -1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (60, "1m"),
        (192, "3m12s"),
        (7500, "2h5m"),
        (7200, "2h"),
        (273600, "3d4h"),
        (-5, "0s"),
        (3601, "1h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (999, "999 B"),
        (1500, "1.5 KB"),
        (253113024, "253 MB"),
        (4_920_000_000, "4.9 GB"),
        (12_000_000_000_000, "12 TB"),
    ],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://gw.example/", "http://gw.example:11434"),
        ("https://gw.example/ollama/", "https://gw.example:443/ollama"),
        ("[::1]:9000", "http://[::1]:9000"),
        (" localhost ", "http://localhost:11434"),
    ],
)
def test_normalize_host(raw: str, url: str) -> None:
    assert normalize_host(raw) == url


@pytest.mark.parametrize("raw", ["", "ftp://x", "http://", "host:99999", "http://h:port"])
def test_normalize_host_refuses(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_host(raw)


def test_parse_time() -> None:
    assert parse_time("2025-01-02T03:04:05Z") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time("2025-01-02T03:04:05") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("num_predict=64", ("num_predict", 64)),
        ("temperature=0.2", ("temperature", 0.2)),
        ('stop=["\\n", "User:"]', ("stop", ["\n", "User:"])),
        ("stop=END", ("stop", "END")),
        (" seed =7", ("seed", 7)),
    ],
)
def test_parse_option(text: str, pair: tuple[str, object]) -> None:
    assert parse_option(text) == pair


@pytest.mark.parametrize("text", ["num_predict", "=5", ""])
def test_parse_option_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid option"):
        parse_option(text)

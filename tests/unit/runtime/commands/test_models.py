"""``corral pull``'s progress lines off a terminal: throttled, and each one ends with the bytes of
the whole pull so far, which the operator reads from a pull Job's log."""

from __future__ import annotations

import io
import re

import pytest

from corral_runtime.commands.models import ProgressPrinter
from corral_runtime.store.pull import PullEvent

pytestmark = pytest.mark.unit
SUFFIX = re.compile(r"\[pull (\d+)/(\d+) bytes\]$")


def _bytes(line: str) -> tuple[int, int]:
    match = SUFFIX.search(line)
    assert match, line
    return int(match[1]), int(match[2])


def test_plain_lines_carry_the_bytes_of_every_layer_together() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, plain_interval=0.0)
    printer(PullEvent("pulling manifest"))
    printer(PullEvent("pulling aaaa", "sha256:aaaa", 1000, 0))
    printer(PullEvent("pulling aaaa", "sha256:aaaa", 1000, 400))
    printer(PullEvent("pulling aaaa", "sha256:aaaa", 1000, 1000))
    printer(PullEvent("pulling bbbb", "sha256:bbbb", 10, 10))
    printer(PullEvent("success"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    progress = [_bytes(line) for line in lines[1:-1]]
    assert progress == [(0, 1000), (400, 1000), (1000, 1000), (1010, 1010)]
    assert lines[2].startswith("pulling aaaa  40% [")


def test_plain_lines_are_throttled_but_each_layer_ends_on_a_line() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, plain_interval=3600.0)
    for done in range(0, 1001, 100):
        printer(PullEvent("pulling aaaa", "sha256:aaaa", 1000, done))
    progress = [_bytes(line) for line in out.getvalue().splitlines()]
    # At most the first line, then nothing for an hour except the layer's completion.
    assert progress[-1] == (1000, 1000) and progress[:-1] in ([], [(0, 1000)])


def test_a_terminal_gets_a_bar_without_the_suffix() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True, interval=0.0)
    printer(PullEvent("pulling aaaa", "sha256:aaaa", 1000, 1000))
    assert "\r" in out.getvalue() and "[pull " not in out.getvalue()


def test_an_import_counts_its_blob_once() -> None:
    # A local import starts before the blob's digest is known, then reports it by digest.
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False, plain_interval=0.0)
    printer(PullEvent("pulling model", None, 500, 0))
    printer(PullEvent("pulling cccc", "sha256:cccc", 500, 500))
    printer(PullEvent("pulling dddd", "sha256:dddd", 20, 20))
    progress = [_bytes(line) for line in out.getvalue().splitlines()]
    assert progress == [(0, 500), (500, 500), (520, 520)]

"""``corral pull``'s progress lines off a terminal: throttled, and each one ends with the bytes of
the whole pull so far, which the operator reads from a pull Job's log; ``corral show``'s sections
and parts."""

from __future__ import annotations

import io
import re

import pytest

from corral_runtime.cli import build_parser
from corral_runtime.commands.models import ProgressPrinter, show_part, show_sections
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


# -- corral show -------------------------------------------------------------------------------

SHOWN = {
    "model_info": {
        "general.architecture": "llama",
        "llama.context_length": 8192,
        "llama.embedding_length": 2048,
    },
    "details": {"parameter_size": "1.2B", "quantization_level": "Q4_K_M"},
    "capabilities": ["completion", "tools"],
    "parameters": 'stop                           "<|eot_id|>"\ntemperature                    0.6',
    "system": "Be brief.\nVery brief.",
    "license": "LLAMA 3.2 COMMUNITY LICENSE\n\nVersion 3.2\nRelease date: 2024\n",
    "template": "{{ .Prompt }}",
    "modelfile": "FROM /blobs/sha256-x\n",
}


def test_show_prints_ollamas_sections_with_the_licenses_first_lines() -> None:
    assert show_sections(SHOWN) == (
        "  Model\n"
        "    architecture        llama\n"
        "    parameters          1.2B\n"
        "    context length      8192\n"
        "    embedding length    2048\n"
        "    quantization        Q4_K_M\n"
        "\n"
        "  Capabilities\n"
        "    completion\n"
        "    tools\n"
        "\n"
        "  Parameters\n"
        '    stop           "<|eot_id|>"\n'
        "    temperature    0.6\n"
        "\n"
        "  System\n"
        "    Be brief.\n"
        "    Very brief.\n"
        "\n"
        "  License\n"
        "    LLAMA 3.2 COMMUNITY LICENSE\n"
        "    Version 3.2\n"
        "    ...\n"
    )


def test_show_leaves_out_empty_sections_and_unknown_rows() -> None:
    bare = {**SHOWN, "capabilities": [], "parameters": "", "system": "", "license": ""}
    bare["details"] = {"parameter_size": "", "quantization_level": "F16"}
    out = show_sections(bare)
    assert out.count("\n\n") == 0 and "parameters" not in out and "F16" in out


@pytest.mark.parametrize(
    ("part", "printed"),
    [
        ("system", "Be brief.\nVery brief.\n"),
        ("template", "{{ .Prompt }}\n"),
        ("modelfile", "FROM /blobs/sha256-x\n"),
        ("license", SHOWN["license"]),
    ],
)
def test_show_parts_print_alone_ending_in_one_newline(part: str, printed: str) -> None:
    assert show_part(SHOWN, part) == printed
    assert show_part({part: ""}, part) == ""


def test_show_takes_one_part_flag_or_json() -> None:
    parser = build_parser()
    assert parser.parse_args(["show", "m", "--modelfile"]).only == "modelfile"
    assert parser.parse_args(["show", "m"]).only is None
    with pytest.raises(SystemExit):
        parser.parse_args(["show", "m", "--json", "--license"])

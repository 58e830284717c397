"""Modelfiles read as Ollama reads them (every instruction, quoting, typed parameters), refused
with the line named, and written back into text that reads into the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.store.modelfile import (
    MAX_INSTRUCTIONS,
    MAX_MODELFILE_BYTES,
    PARAMETER_TYPES,
    Modelfile,
    ModelfileError,
    base_path,
    decode_modelfile,
    parameter_text,
    parse_modelfile,
    render_modelfile,
)

pytestmark = pytest.mark.unit

EVERYTHING = '''# a chat model for the docs
from llama3.2:1b
  Template """{{ if .System }}<|system|>{{ .System }}{{ end }}
<|user|>{{ .Prompt }}
<|assistant|>"""
SYSTEM "You are Mario from Super Mario Bros."
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop "<|user|>"
PARAMETER stop <|end|>
PARAMETER use_mmap false
PARAMETER seed -1

MESSAGE user Is Toronto in Canada?
MESSAGE assistant """yes"""
MESSAGE tool 42
license MIT
LICENSE """Copyright the authors.
All rights reserved."""
'''


def test_every_instruction_in_any_case_with_comments_and_each_quoting() -> None:
    parsed = parse_modelfile(EVERYTHING)
    assert parsed == Modelfile(
        base="llama3.2:1b",
        template=(
            "{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>{{ .Prompt }}\n<|assistant|>"
        ),
        system="You are Mario from Super Mario Bros.",
        parameters={
            "temperature": 0.7,
            "num_ctx": 4096,
            "stop": ["<|user|>", "<|end|>"],
            "use_mmap": False,
            "seed": -1,
        },
        messages=[
            {"role": "user", "content": "Is Toronto in Canada?"},
            {"role": "assistant", "content": "yes"},
            {"role": "tool", "content": "42"},
        ],
        license="MIT\nCopyright the authors.\nAll rights reserved.",
    )


def test_later_template_and_system_win_and_values_keep_what_quotes_hold() -> None:
    parsed = parse_modelfile('FROM m\nSYSTEM one\nSYSTEM """  two  """   \nTEMPLATE "a"b"\n')
    assert (parsed.system, parsed.template) == ("  two  ", 'a"b')
    assert parse_modelfile("FROM  ./my model.gguf  \n").base == "./my model.gguf"


def test_crlf_line_ends_read_like_lf_and_quoted_values_keep_their_cr() -> None:
    parsed = parse_modelfile('FROM m\r\nSYSTEM hi \r\nTEMPLATE """a\r\nb"""\r\n')
    assert (parsed.base, parsed.system, parsed.template) == ("m", "hi", "a\r\nb")


def test_parameters_take_their_types() -> None:
    text = "FROM m\n" + "\n".join(
        f"PARAMETER {name} {value}"
        for name, value in [
            ("top_k", "40"),
            ("top_p", "0.9"),
            ("min_p", ".05"),
            ("repeat_penalty", "1"),
            ("numa", "TRUE"),
            ("num_predict", "-2"),
            ("frequency_penalty", "1e-3"),
        ]
    )
    assert parse_modelfile(text).parameters == {
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
        "numa": True,
        "num_predict": -2,
        "frequency_penalty": 0.001,
    }
    assert PARAMETER_TYPES["stop"] is list


def test_deprecated_parameters_are_skipped_with_a_warning() -> None:
    parsed = parse_modelfile("FROM m\nPARAMETER mirostat 2\n")
    assert parsed.parameters == {}
    assert parsed.warnings == ("line 2: parameter mirostat is deprecated and was skipped",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM m\nADAPTER ./lora.gguf\n", "line 2: adapters are not supported"),
        ("FROM m\n\nPARAMETER color red\n", "line 3: unknown parameter 'color'"),
        ("FROM m\nPARAMETER num_ctx 2048.5\n", "line 2: parameter num_ctx takes an integer"),
        ("FROM m\nPARAMETER num_ctx 99999999999999999999\n", "line 2: parameter num_ctx takes"),
        ("FROM m\nPARAMETER temperature warm\n", "line 2: parameter temperature takes a number"),
        ("FROM m\nPARAMETER top_p inf\n", "line 2: parameter top_p takes a number"),
        ("FROM m\nPARAMETER top_p 1_0\n", "line 2: parameter top_p takes a number"),
        ("FROM m\nPARAMETER use_mmap yes\n", "line 2: parameter use_mmap takes true or false"),
        ("FROM m\nPARAMETER temperature\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM m\nMESSAGE robot hi\n", "line 2: message role 'robot' is not one of"),
        ("FROM m\nMESSAGE user\n", "line 2: MESSAGE needs a role and a text"),
        ("# only a comment\nSYSTEM hi\n", "no FROM line"),
        ("FROM\n", "line 1: FROM needs a value"),
        ("FROM m\nFROM n\n", "line 2: a second FROM (the first is on line 1)"),
        ("FROM m\nQUANTIZE q4\n", "line 2: unknown instruction 'QUANTIZE'"),
        ("FROM m\nDRAFT small\n", "line 2: draft models are not supported"),
        ('FROM m\nSYSTEM """never\nclosed\n', 'line 2: the """ opened here is never closed'),
        ('FROM m\nSYSTEM "open\n', 'line 2: the " opened here is never closed'),
        ("FROM m\nSYSTEM a\x00b\n", "line 2: the Modelfile contains a NUL character"),
    ],
)
def test_what_cannot_be_used_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert str(caught.value).startswith(message)


def test_hostile_sizes_and_counts_are_refused() -> None:
    with pytest.raises(ModelfileError, match="larger than 4 MiB"):
        parse_modelfile("FROM m\nSYSTEM " + "x" * MAX_MODELFILE_BYTES)
    with pytest.raises(ModelfileError, match="larger than 4 MiB"):
        decode_modelfile(b"#" * (MAX_MODELFILE_BYTES + 1))
    many = "FROM m\n" + "PARAMETER stop x\n" * MAX_INSTRUCTIONS
    with pytest.raises(ModelfileError, match=f"line {MAX_INSTRUCTIONS + 1}: more than"):
        parse_modelfile(many)


def test_bytes_decode_as_utf8_or_utf16_with_a_mark_and_bad_bytes_name_their_line() -> None:
    assert decode_modelfile("\ufeffFROM m\n".encode()) == "FROM m\n"
    assert decode_modelfile("FROM m\nSYSTEM é\n".encode("utf-16")) == "FROM m\nSYSTEM é\n"
    with pytest.raises(ModelfileError, match="line 2: the Modelfile is not valid UTF-8"):
        decode_modelfile(b"FROM m\nSYSTEM \xff\xfe\n")


def test_a_written_modelfile_reads_back_into_the_same_model() -> None:
    original = parse_modelfile(EVERYTHING)
    text = render_modelfile(original, comments=["written by corral show"])
    assert text.startswith("# written by corral show\n\nFROM llama3.2:1b\n")
    assert "PARAMETER stop <|user|>\nPARAMETER stop <|end|>\n" in text
    assert parse_modelfile(text) == original


@pytest.mark.parametrize(
    "value",
    [" padded ", '"quoted"', 'ends with "', "two\nlines", "cr\r\nlf", "", "#hash", '"""'],
)
def test_values_that_need_quoting_round_trip(value: str) -> None:
    model = Modelfile(base="m", system=value, parameters={"stop": [value]}, license=value)
    assert parse_modelfile(render_modelfile(model)) == model


def test_a_value_no_quoting_can_carry_is_refused_when_written() -> None:
    with pytest.raises(ModelfileError, match="SYSTEM's value cannot be written"):
        render_modelfile(Modelfile(base="m", system='a"""\nb"'))


def test_from_paths_are_relative_to_the_modelfile_and_expand_home(tmp_path: Path) -> None:
    assert base_path("model.gguf", tmp_path) == tmp_path / "model.gguf"
    assert base_path("/abs/model.gguf", tmp_path) == Path("/abs/model.gguf")
    assert base_path("~/model.gguf", tmp_path) == Path.home() / "model.gguf"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (1.0, "1"),
        (0.9, "0.9"),
        (1e-05, "1e-05"),
        (True, "true"),
        (42, "42"),
        ("a", "a"),
    ],
)
def test_parameter_values_read_as_ollama_writes_them(value: object, text: str) -> None:
    # `temperature 0`, not Python's 0.0: ollama show, /show parameters and a Modelfile alike.
    assert parameter_text(value) == text
    if isinstance(value, float):
        assert parse_modelfile(f"FROM x\nPARAMETER temperature {text}\n").parameters == {
            "temperature": value
        }

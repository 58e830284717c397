"""The KV cache type: Ollama's names from the flag or the environment, a one-line error naming
the setting for anything else, and flash attention with a quantized cache."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral_runtime.cli import build_parser
from corral_runtime.commands.serve import settings_error, settings_from_args
from corral_runtime.engine.llama import flash_attention_for
from corral_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit


def test_f16_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_KV_CACHE_TYPE", raising=False)
    assert RuntimeSettings().kv_cache_type == "f16"


@pytest.mark.parametrize(
    ("value", "expected"), [("q8_0", "q8_0"), ("Q4_0", "q4_0"), (" f16", "f16")]
)
def test_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("CORRAL_KV_CACHE_TYPE", value)
    assert RuntimeSettings().kv_cache_type == expected


def test_the_flag_names_it_and_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_KV_CACHE_TYPE", "q8_0")
    args = build_parser().parse_args(["serve", "--kv-cache-type", "Q4_0"])
    assert settings_from_args(args).kv_cache_type == "q4_0"


def test_an_unknown_flag_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--kv-cache-type", "q2_k"])
    assert "--kv-cache-type" in capsys.readouterr().err


def test_an_unknown_environment_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_KV_CACHE_TYPE", "q2_k")
    with pytest.raises(ValidationError) as caught:
        RuntimeSettings()
    assert settings_error(caught.value) == (
        "Error: kv-cache-type: Input should be 'f16', 'q8_0' or 'q4_0'"
    )


@pytest.mark.parametrize(
    ("kv_cache_type", "asked", "flash"),
    [
        ("f16", False, False),
        ("f16", True, True),
        ("f16", None, None),  # unset: llama.cpp's choice, on wherever the devices run it
        ("q8_0", False, True),
        ("q8_0", None, True),
        ("q4_0", False, True),
    ],
)
def test_a_quantized_cache_has_flash_attention(
    kv_cache_type: str, asked: bool | None, flash: bool | None
) -> None:
    assert flash_attention_for(kv_cache_type, asked) is flash

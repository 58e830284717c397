"""Ollama options: validation, merging over the model's params, and conversion."""

from __future__ import annotations

import logging

import pytest

from corral_runtime.api.options import (
    InvalidOptionsError,
    load_options,
    merge_options,
    sampling_params,
    validate_options,
)
from corral_runtime.engine.types import OutputFormat

pytestmark = pytest.mark.unit


def test_defaults_are_ollamas() -> None:
    params = sampling_params(validate_options(None), None)
    assert (params.temperature, params.top_k, params.top_p) == (0.8, 40, 0.9)
    assert params.min_p == 0 and params.seed is None and params.num_predict == -1
    assert params.repeat_penalty == 1.0 and params.repeat_last_n == 64 and params.stop == ()


def test_request_options_win_over_model_params() -> None:
    model = validate_options({"stop": ["<end_of_turn>"], "top_k": 64, "temperature": 0.5})
    request = validate_options({"temperature": 0, "num_ctx": 1024})
    merged = merge_options(model, request)
    params = sampling_params(merged, OutputFormat())
    assert params.temperature == 0 and params.top_k == 64
    assert params.stop == ("<end_of_turn>",) and params.output_format == OutputFormat()
    assert load_options(merged).num_ctx == 1024


def test_ints_are_numbers_and_seed_minus_one_is_random() -> None:
    params = sampling_params(validate_options({"temperature": 1, "seed": -1, "stop": "x"}), None)
    assert params.temperature == 1.0 and params.seed is None and params.stop == ("x",)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"temperature": "0.5"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"seed": True}, "seed"),
        ({"stop": [1]}, "stop"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"num_predict": -3}, "num_predict"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidOptionsError, match=key):
        validate_options(options)


def test_options_must_be_an_object() -> None:
    with pytest.raises(InvalidOptionsError):
        validate_options([1, 2])  # type: ignore[arg-type]


def test_unknown_keys_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        options = validate_options({"mirostat_whatever": 1, "top_k": 3})
    assert options.top_k == 3
    assert "mirostat_whatever" in caplog.text
    assert "mirostat_whatever" not in merge_options(options).model_dump()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"num_ctx": 1}, "num_ctx"),
        ({"num_ctx": 8}, "num_ctx"),
        ({"num_ctx": 1_000_000_000}, "num_ctx"),
        ({"num_batch": 0}, "num_batch"),
        ({"num_batch": 10**9}, "num_batch"),
        ({"num_thread": 513}, "num_thread"),
        ({"num_gpu": -2}, "num_gpu"),
        ({"num_gpu": 2**31}, "num_gpu"),
        ({"top_k": 2**31}, "top_k"),
        ({"num_predict": 2**31}, "num_predict"),
        ({"repeat_last_n": 2**31}, "repeat_last_n"),
        ({"num_keep": -2}, "num_keep"),
        ({"seed": 2**63}, "seed"),
        ({"repeat_penalty": -1}, "repeat_penalty"),
        ({"top_p": float("nan")}, "top_p"),
        ({"temperature": float("inf")}, "temperature"),
        ({"presence_penalty": float("-inf")}, "presence_penalty"),
        ({"temperature": 10**400}, "temperature"),
        ({"frequency_penalty": -(10**400)}, "frequency_penalty"),
    ],
)
def test_what_llama_cpp_cannot_take_is_refused_naming_the_option(
    options: dict[str, object], key: str
) -> None:
    with pytest.raises(InvalidOptionsError, match=key) as raised:
        validate_options(options)
    assert raised.value.option == key


@pytest.mark.parametrize(
    "options",
    [
        {"num_ctx": 64},
        {"num_ctx": 131072},
        {"num_gpu": -1},
        {"num_gpu": 999},
        {"num_thread": 0},
        {"seed": -1},
        {"seed": 2**32},
        {"num_predict": -2},
        {"repeat_last_n": -1},
        {"temperature": 0, "top_p": 1, "min_p": 0, "top_k": 0},
    ],
)
def test_values_within_the_bounds_pass(options: dict[str, object]) -> None:
    validate_options(options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": "hot"}, "invalid option 'temperature': expected a number"),
        ({"top_p": [1]}, "invalid option 'top_p': expected a number"),
        ({"top_k": 1.5}, "invalid option 'top_k': expected an integer"),
        ({"stop": 3}, "invalid option 'stop': expected a string or a list of strings"),
        ({"use_mmap": "yes"}, "invalid option 'use_mmap': expected true or false"),
    ],
)
def test_a_wrong_type_names_the_option_and_what_it_takes(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidOptionsError) as raised:
        validate_options(options)
    assert str(raised.value) == message


@pytest.mark.parametrize("stop", [["x"] * 33, ["x" * 513], "x" * 513])
def test_stop_strings_are_bounded_in_number_and_length(stop: object) -> None:
    with pytest.raises(InvalidOptionsError, match="stop"):
        validate_options({"stop": stop})
    validate_options({"stop": ["x"] * 32})
    validate_options({"stop": "x" * 512})

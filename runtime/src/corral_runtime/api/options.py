"""Ollama's ``options``: validated, merged with the model's params layer, split into what
sampling needs and what loading needs.

Unknown keys are ignored with a warning (as Ollama does); a known key with a value of the wrong
type, or outside the bounds below, is an error that names the key. Every option that reaches
llama.cpp is bounded here, since llama.cpp asserts (and takes the process down), allocates
without limit or misbehaves beyond them: a context too small for one prompt chunk, a thread
count past ggml's maximum, numbers past a C ``int``, NaN and infinity.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, ValidationError

from corral_runtime.engine.types import (
    MAX_NUM_CTX,
    MIN_NUM_CTX,
    LoadOptions,
    OutputFormat,
    SamplingParams,
)

log = logging.getLogger(__name__)

Number = StrictInt | StrictFloat


class InvalidOptionsError(ValueError):
    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class OllamaOptions(BaseModel):
    """Every option Ollama knows; all optional so that layers can be merged."""

    model_config = ConfigDict(extra="allow")

    # Sampling.
    num_keep: StrictInt | None = None
    seed: StrictInt | None = None
    num_predict: StrictInt | None = None
    top_k: StrictInt | None = None
    top_p: Number | None = None
    min_p: Number | None = None
    typical_p: Number | None = None
    repeat_last_n: StrictInt | None = None
    temperature: Number | None = None
    repeat_penalty: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    penalize_newline: StrictBool | None = None
    stop: list[str] | str | None = None
    # Loading.
    numa: StrictBool | None = None
    num_ctx: StrictInt | None = None
    num_batch: StrictInt | None = None
    num_gpu: StrictInt | None = None
    main_gpu: StrictInt | None = None
    use_mmap: StrictBool | None = None
    num_thread: StrictInt | None = None


def validate_options(raw: dict[str, Any] | None, *, source: str = "options") -> OllamaOptions:
    if raw is None:
        return OllamaOptions()
    if not isinstance(raw, dict):
        raise InvalidOptionsError(f"{source} must be an object")
    try:
        options = OllamaOptions.model_validate(raw)
    except ValidationError as exc:
        key = str(exc.errors()[0]["loc"][0])
        raise InvalidOptionsError(
            f"invalid option {key!r}: expected {expected_type(key)}", option=key
        ) from exc
    for key in options.model_extra or {}:
        log.warning("invalid option provided: %s", key)
    check_ranges(options)
    check_stops(options)
    return options


def expected_type(option: str) -> str:
    """What an option takes, in a client's words (pydantic's own words name its union members,
    as in ``temperature.int``)."""
    annotation = str(OllamaOptions.model_fields[option].annotation)
    if "list" in annotation:
        return "a string or a list of strings"
    if "float" in annotation:
        return "a number"
    if "bool" in annotation:
        return "true or false"
    return "an integer"


INT32_MAX = 2**31 - 1
INT64 = 2**63
# ggml's GGML_MAX_N_THREADS: llama.cpp asserts on more.
MAX_THREADS = 512
MAX_NUM_BATCH = 1 << 16
# Every stop string is matched against every token on the model's one decode thread: many or
# long ones would slow every sequence of the model, not just the request's own.
MAX_STOPS = 32
MAX_STOP_CHARS = 512

# Inclusive bounds of the numeric options (None: unbounded on that side; floats must also be
# finite). Sizes llama.cpp takes as a C int stop at INT32_MAX.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, None),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "typical_p": (0, 1),
    "top_k": (0, INT32_MAX),
    "num_ctx": (MIN_NUM_CTX, MAX_NUM_CTX),
    "num_predict": (-2, INT32_MAX),
    "num_keep": (-1, INT32_MAX),
    "repeat_last_n": (-1, INT32_MAX),
    "repeat_penalty": (0, None),
    "presence_penalty": (None, None),
    "frequency_penalty": (None, None),
    "seed": (-INT64, INT64 - 1),
    "num_thread": (0, MAX_THREADS),
    "num_batch": (1, MAX_NUM_BATCH),
    "num_gpu": (-1, INT32_MAX),
    "main_gpu": (0, INT32_MAX),
}


def out_of_range(value: float, low: float | None, high: float | None) -> bool:
    """Whether a number lies outside [low, high] (NaN, infinities and integers past any float
    always do)."""
    try:
        if not math.isfinite(float(value)):
            return True
    except OverflowError:
        return True
    return (low is not None and value < low) or (high is not None and value > high)


def check_stops(options: OllamaOptions) -> None:
    stop = options.stop
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidOptionsError(
            f"invalid option 'stop': at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} "
            "characters each",
            option="stop",
        )


def check_ranges(options: OllamaOptions) -> None:
    for name, (low, high) in RANGES.items():
        value = getattr(options, name)
        if value is None or not out_of_range(value, low, high):
            continue
        bounds = f"{'' if low is None else low}..{'' if high is None else high}"
        raise InvalidOptionsError(
            f"invalid option {name!r}: {value} is out of range ({bounds})", option=name
        )


def merge_options(*layers: OllamaOptions) -> OllamaOptions:
    """Later layers win, key by key (model params, then the request's options)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer.model_dump(exclude_none=True, exclude=set(layer.model_extra or {})))
    return OllamaOptions.model_validate(merged)


def sampling_params(options: OllamaOptions, output_format: OutputFormat | None) -> SamplingParams:
    defaults = SamplingParams()
    stop = options.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    seed = options.seed if options.seed is not None and options.seed >= 0 else None
    return SamplingParams(
        temperature=_f(options.temperature, defaults.temperature),
        top_k=options.top_k if options.top_k is not None else defaults.top_k,
        top_p=_f(options.top_p, defaults.top_p),
        min_p=_f(options.min_p, defaults.min_p),
        typical_p=_f(options.typical_p, defaults.typical_p),
        repeat_penalty=_f(options.repeat_penalty, defaults.repeat_penalty),
        repeat_last_n=(
            options.repeat_last_n if options.repeat_last_n is not None else defaults.repeat_last_n
        ),
        presence_penalty=_f(options.presence_penalty, defaults.presence_penalty),
        frequency_penalty=_f(options.frequency_penalty, defaults.frequency_penalty),
        seed=seed,
        num_predict=options.num_predict if options.num_predict is not None else -1,
        stop=tuple(s for s in stops if s),
        output_format=output_format,
    )


def load_options(options: OllamaOptions) -> LoadOptions:
    return LoadOptions(
        num_ctx=options.num_ctx,
        num_gpu=options.num_gpu,
        num_thread=options.num_thread or None,
        num_batch=options.num_batch,
    )


def _f(value: float | None, default: float) -> float:
    return float(value) if value is not None else default

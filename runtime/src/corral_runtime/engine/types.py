"""What the engine is asked to do and what it answers, independent of how decode is scheduled.

A generation request carries a rendered prompt and sampling parameters; its stream yields text
pieces and then one ``GenerationStats``. Wire protocols convert to and from these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from corral_runtime.engine.priority import DEFAULT_PRIORITY

DoneReason = Literal["stop", "length", "cancelled"]

# Ollama's defaults for sampling options (see its api/types.go DefaultOptions).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9

# num_ctx bounds. Below the minimum llama.cpp cannot hold one prompt chunk per sequence (it
# shrinks its batch to the context and then asserts on a full chunk, taking the process down);
# above the model's trained context a request gets the trained context, as in Ollama, and the
# maximum bounds what any request may ask for.
MIN_NUM_CTX = 64
MAX_NUM_CTX = 1 << 20


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """Constrained output: any JSON value (``schema`` None) or JSON matching a schema."""

    schema: dict[str, Any] | None = None


# The most alternatives a request may ask to see per token (OpenAI's and Ollama's limit).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class TokenChoice:
    """A token as the model's vocabulary spells it, and its log-probability."""

    text: str
    data: bytes
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before sampling reshapes it) and
    the most likely tokens at its position."""

    chosen: TokenChoice
    top: tuple[TokenChoice, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    num_predict: int = -1  # -1: until the context is full
    stop: tuple[str, ...] = ()
    output_format: OutputFormat | None = None
    # None: no log-probabilities; n: each token's, with the n most likely tokens beside it.
    logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Per-request load settings (Ollama options); None means the server's setting."""

    num_ctx: int | None = None
    num_gpu: int | None = None
    num_thread: int | None = None
    num_batch: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    # Token ids evaluated before the prompt (Ollama's ``context`` from an earlier answer).
    context: tuple[int, ...] = ()
    # Its class in the wait for a slot (``priority.PRIORITY_CLASSES``).
    priority: str = DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """The final record of a generation; durations in nanoseconds, as Ollama reports them."""

    done_reason: DoneReason
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    time_to_first_token_s: float | None = None
    cached_prompt_tokens: int = 0  # of prompt_eval_count, reused from a slot's cache
    tokens: tuple[int, ...] = ()  # the prompt's tokens, then the answer's (Ollama's context)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class EngineError(RuntimeError):
    """A request the engine could not serve for a reason of the server's own.

    Its message is what a client reads; ``detail`` (files, llama.cpp's words) is only logged.
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class EngineFailedError(EngineError):
    """The model's decode thread died: its requests fail, and the model is reloaded."""


class GenerationTimeoutError(EngineError):
    """A generation ran past the server's time limit; its slot is freed for others."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"generation stopped after the server's time limit of {limit_s:g} s; "
            "ask for fewer tokens (num_predict, max_tokens) or raise the limit"
        )
        self.limit_s = limit_s


class InvalidRequestError(ValueError):
    """A request the engine refuses because of what it asks (prompt too long, bad schema)."""


class QueueFullError(RuntimeError):
    """The model's wait queue is full."""

    MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class QueueTimeoutError(QueueFullError):
    """A request waited for a slot longer than the queue timeout; answered like a full queue."""

    MESSAGE = "server busy, please try again.  timed out waiting for a free slot"

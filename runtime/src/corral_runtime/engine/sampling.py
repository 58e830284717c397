"""Per-sequence llama.cpp sampler chains built from a request's ``SamplingParams``.

Every sequence owns its chain, so its seed, penalties and grammar state never mix with another
sequence's in the same batch: the same seed over the same logits gives the same tokens whether
the sequence ran alone or beside others.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from corral_runtime.engine.grammar import schema_to_gbnf
from corral_runtime.engine.llama import LlamaBatchContext
from corral_runtime.engine.types import InvalidRequestError, OutputFormat, SamplingParams

if TYPE_CHECKING:
    import numpy as np


class GrammarCache:
    """GBNF text per output format; converting a JSON schema is worth doing once."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def gbnf(self, output_format: OutputFormat) -> str:
        from llama_cpp.llama_grammar import JSON_GBNF

        # Not sorted: the schema's property order is the order of the output.
        key = json.dumps(output_format.schema)
        if key not in self._texts:
            if output_format.schema is None:
                text = JSON_GBNF
            else:
                try:
                    text = schema_to_gbnf(output_format.schema)
                except Exception as exc:  # The converter raises bare Exceptions and others.
                    raise InvalidRequestError(f"invalid JSON schema in format: {exc}") from exc
            self._texts[key] = text
        return self._texts[key]


def resolve_seed(seed: int | None) -> int:
    """The seed a sequence samples with: the request's, or a fresh random one."""
    if seed is None or seed < 0:
        return random.getrandbits(31)
    return seed & 0xFFFFFFFF


def penalized(params: SamplingParams) -> bool:
    """Whether the request asks for any repetition penalty."""
    return params.repeat_last_n != 0 and (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )


def plain_greedy(params: SamplingParams, *, grammar: str | None) -> bool:
    """Whether a sequence just takes the most likely token: no grammar, no penalty and a
    temperature of zero or less. Such a sequence needs no sampler chain; the engine takes the
    arg-max of its logits directly, the token llama.cpp's greedy sampler would pick, without
    first copying all the vocabulary's logits into a candidate array."""
    return params.temperature <= 0 and grammar is None and not penalized(params)


def build_chain(
    context: LlamaBatchContext,
    params: SamplingParams,
    prompt: Sequence[int],
    *,
    grammar: str | None,
) -> Any:
    """A sampler chain for one sequence; the caller frees it with ``free_chain``.

    The order follows llama.cpp's own: grammar (so truncation never removes every allowed
    token), penalties, top-k, typical, top-p, min-p, temperature, then the seeded draw; a
    temperature of zero or less picks the most likely token instead.
    """
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if grammar is not None:
            llama_cpp.llama_sampler_chain_add(chain, context.grammar_sampler(grammar))
        if penalized(params):
            # Never more than the context: llama.cpp allocates a window of this many tokens.
            last_n = (
                context.n_ctx
                if params.repeat_last_n < 0
                else min(params.repeat_last_n, context.n_ctx)
            )
            penalties = llama_cpp.llama_sampler_init_penalties(
                context.n_vocab,
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
            # The prompt counts toward repetition, as it does in Ollama; accepted here, before
            # the chain exists, because the grammar must see generated tokens only.
            for token in prompt[-last_n:]:
                llama_cpp.llama_sampler_accept(penalties, token)
            llama_cpp.llama_sampler_chain_add(chain, penalties)
        if params.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_top_k(params.top_k)
            )
        if 0.0 < params.typical_p < 1.0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_typical(params.typical_p, 1)
            )
        if 0.0 < params.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
            )
        if params.min_p > 0.0:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1)
            )
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_temp(params.temperature)
        )
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_dist(resolve_seed(params.seed))
        )
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise
    return chain


def token_logprobs(
    logits: np.ndarray[Any, np.dtype[np.float32]], token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The log-softmax of ``logits`` at ``token``, and the ``top`` most likely tokens with
    theirs, most likely first (ties by token id)."""
    import numpy as np  # only requests that ask for logprobs need it (see engine.llama)

    values = logits.astype(np.float64)
    peak = float(values.max())
    log_total = peak + math.log(float(np.exp(values - peak).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        count = min(top, values.size)
        candidates = np.argpartition(-values, count - 1)[:count]
        ranked = sorted(candidates.tolist(), key=lambda t: (-values[t], t))
        best = [(int(t), float(values[t]) - log_total) for t in ranked]
    return float(values[token]) - log_total, best


def free_chain(chain: Any) -> None:
    import llama_cpp

    llama_cpp.llama_sampler_free(chain)

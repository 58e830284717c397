"""A prefix shared across slots, on the real model: a new conversation whose system prompt
another slot already evaluated (here one still generating) gets that slot's whole prompt chunks
copied into its own slot instead of evaluating them again, and answers bit for bit what a fresh
server answers, log-probabilities included; the conversation it copied from is not disturbed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral_runtime.engine.scheduling import PREFILL_CHUNK, common_prefix
from corral_runtime.engine.types import GenerationRequest, SamplingParams
from tests.runtime.test_concurrency_engine import SYSTEM, TURN, complete, loaded
from tests.runtime.test_warm_turns import answer_with_logprobs

pytestmark = pytest.mark.runtime

# Two whole chunks and more of system prompt, so there is something worth copying.
LONG_SYSTEM = SYSTEM * 2
FIRST = TURN.format(LONG_SYSTEM + "What cakes do you have, and which of them keep a week?")
SECOND = TURN.format(LONG_SYSTEM + "When do you open on Saturday?")
LONG_ANSWER = SamplingParams(temperature=0, num_predict=64)


async def test_a_new_conversation_copies_a_system_prompt_another_slot_evaluated(
    test_model_path: Path,
) -> None:
    async with loaded(test_model_path, parallel=2, max_pending=2) as worker:
        first = worker.generate(GenerationRequest(prompt=FIRST, params=LONG_ANSWER))
        await first.started()
        pieces = aiter(first)
        # The first conversation's prompt is evaluated, and it decodes.
        opening = await anext(pieces)
        second_text, second_stats, second_logprobs = await answer_with_logprobs(worker, SECOND)
        first_text = "".join([opening, *[piece async for piece in pieces]])
        first_tokens = await worker.tokenize(FIRST)
        second_tokens = await worker.tokenize(SECOND)
    async with loaded(test_model_path, parallel=2, max_pending=2) as fresh:
        fresh_second = await answer_with_logprobs(fresh, SECOND)
        fresh_first_text, _ = await complete(
            fresh.generate(GenerationRequest(prompt=FIRST, params=LONG_ANSWER))
        )

    shared = common_prefix(first_tokens, second_tokens)
    assert shared >= 2 * PREFILL_CHUNK
    # Copied from the busy slot: every whole chunk of the shared system prompt.
    assert second_stats.cached_prompt_tokens == shared // PREFILL_CHUNK * PREFILL_CHUNK
    assert fresh_second[1].cached_prompt_tokens == 0
    assert (second_text, second_logprobs) == (fresh_second[0], fresh_second[2])
    assert second_stats.prompt_eval_count == fresh_second[1].prompt_eval_count
    # The slot it copied from went on as if nothing had happened.
    assert first_text == fresh_first_text


async def test_a_shared_prefix_shorter_than_a_chunk_is_not_copied(test_model_path: Path) -> None:
    async with loaded(test_model_path, parallel=2, max_pending=2) as worker:
        first = worker.generate(
            GenerationRequest(prompt=TURN.format("Hello there."), params=LONG_ANSWER)
        )
        await first.started()
        pieces = aiter(first)
        await anext(pieces)
        _, stats, _ = await answer_with_logprobs(worker, TURN.format("Hello, what bread?"))
        async with asyncio.timeout(60):
            async for _ in pieces:
                pass
    assert stats.cached_prompt_tokens == 0

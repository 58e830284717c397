"""Warming a finished turn, on the real model: once a turn ends, its idle slot evaluates the
turn's answer again as whole prompt chunks, so the conversation's next turn reuses them (its
cached prompt tokens grow past the last turn's prompt) and still answers bit for bit what a
fresh server answers, log-probabilities included."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from corral_runtime.engine.llama import Row
from corral_runtime.engine.scheduling import PREFILL_CHUNK, common_prefix
from corral_runtime.engine.types import (
    GenerationRequest,
    GenerationStats,
    SamplingParams,
    TokenLogprob,
)
from corral_runtime.engine.worker import ModelWorker
from tests.runtime.test_concurrency_engine import SYSTEM, TURN, loaded, run

pytestmark = pytest.mark.runtime

# Long enough that the answer fills more than one chunk past the opening prompt's last whole one.
ANSWER = SamplingParams(temperature=0, num_predict=96)
FOLLOW_UP = SamplingParams(temperature=0, num_predict=24, logprobs=3)


async def settled(worker: ModelWorker) -> None:
    """Wait until the worker has warmed every chunk it can (it does so on its own thread)."""
    async with asyncio.timeout(60):
        while worker.warming:  # noqa: ASYNC110 (set on the decode thread, which has no event)
            await asyncio.sleep(0.05)


async def answer_with_logprobs(
    worker: ModelWorker, prompt: str
) -> tuple[str, GenerationStats, list[TokenLogprob]]:
    """A greedy answer, its stats and every token's log-probability (and the top three at its
    position) as llama.cpp computed them."""
    stream = worker.generate(GenerationRequest(prompt=prompt, params=FOLLOW_UP))
    await stream.started()
    text = "".join([piece async for piece in stream])
    assert stream.stats is not None
    return text, stream.stats, stream.take_logprobs()


async def test_a_warmed_turn_is_reused_and_answers_as_a_fresh_server(
    test_model_path: Path,
) -> None:
    opening = TURN.format(SYSTEM + "What cakes do you have, and which of them keep a week?")
    async with loaded(test_model_path, parallel=2, max_pending=2) as worker:
        answer, first = await run(worker, opening, ANSWER)
        assert first.done_reason == "length"
        await settled(worker)
        follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And what bread?")
        warm_text, warm_stats, warm_logprobs = await answer_with_logprobs(worker, follow_up)
        follow_tokens = await worker.tokenize(follow_up)
    async with loaded(test_model_path, parallel=2, max_pending=2) as fresh:
        fresh_text, fresh_stats, fresh_logprobs = await answer_with_logprobs(fresh, follow_up)

    assert fresh_stats.cached_prompt_tokens == 0
    assert warm_text == fresh_text
    assert warm_logprobs == fresh_logprobs  # bit for bit, every token
    assert warm_stats.prompt_eval_count == fresh_stats.prompt_eval_count

    # Without warming only the opening's whole chunks were reusable; now the answer's are too
    # (its KV was written by decode steps: the last generated token was never fed at all).
    unwarmed = first.prompt_eval_count // PREFILL_CHUNK * PREFILL_CHUNK
    turn = list(first.tokens[:-1])
    shared = min(common_prefix(turn, follow_tokens), len(follow_tokens) - 1)
    assert warm_stats.cached_prompt_tokens == shared // PREFILL_CHUNK * PREFILL_CHUNK
    assert warm_stats.cached_prompt_tokens > unwarmed


async def test_without_warm_turns_a_next_turn_reuses_only_what_was_prompt(
    test_model_path: Path,
) -> None:
    # CORRAL_WARM_TURNS=false (one-shot traffic): an idle slot does nothing, and a next turn
    # reuses only the opening's whole chunks.
    opening = TURN.format(SYSTEM + "What cakes do you have, and which of them keep a week?")
    async with loaded(test_model_path, parallel=2, max_pending=2, warm_turns=False) as worker:
        answer, first = await run(worker, opening, ANSWER)
        assert not worker.warming
        follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And what bread?")
        _, stats, _ = await answer_with_logprobs(worker, follow_up)
    assert stats.cached_prompt_tokens == first.prompt_eval_count // PREFILL_CHUNK * PREFILL_CHUNK


async def test_a_request_that_arrives_during_a_warm_chunk_stops_it_and_the_turn_is_warmed_later(
    test_model_path: Path,
) -> None:
    # Warming is speculative: a client's next request (one-shot requests in a row, or another
    # conversation) must not wait for an idle slot's warm chunk. It is sent from inside the
    # first warm chunk's llama_decode, so it is there while that runs for sure: that decode
    # stops, the request is answered as a fresh server answers it, and the finished turn is
    # still warmed afterwards, its next turn reusing it as if nothing had come between.
    opening = TURN.format(SYSTEM + "What cakes do you have, and which of them keep a week?")
    other = TURN.format("Name three colours.")
    async with loaded(test_model_path, parallel=2, max_pending=2) as fresh:
        alone, _ = await run(fresh, other, ANSWER)
    async with loaded(test_model_path, parallel=2, max_pending=2) as worker:
        loop = asyncio.get_running_loop()
        context = worker._require_context()
        real_decode = context.decode
        warm_decodes: list[bool] = []  # each warm chunk's decode: completed or stopped
        sent = threading.Event()
        asked: list[asyncio.Task[tuple[str, GenerationStats]]] = []

        def send() -> None:
            asked.append(asyncio.ensure_future(run(worker, other, ANSWER)))
            sent.set()

        def decode(rows: list[Row]) -> bool:
            warm = worker._warming  # an idle slot's warm chunk, not a prompt's
            if warm and not warm_decodes:
                loop.call_soon_threadsafe(send)
                assert sent.wait(30)
                # The request is queued once its task has run ``generate``.
                deadline = time.monotonic() + 30
                while not worker._interrupt.flag.value and time.monotonic() < deadline:
                    time.sleep(0.001)
            done = real_decode(rows)
            if warm:
                warm_decodes.append(done)
            return done

        context.decode = decode  # type: ignore[method-assign]
        answer, first = await run(worker, opening, ANSWER)
        async with asyncio.timeout(60):
            while not asked:  # noqa: ASYNC110 (set from the decode thread's callback)
                await asyncio.sleep(0.01)
        text, _ = await asked[0]
        await settled(worker)
        follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And what bread?")
        _, stats, _ = await answer_with_logprobs(worker, follow_up)
        follow_tokens = await worker.tokenize(follow_up)

    assert warm_decodes[0] is False  # the first warm chunk stopped for the request
    assert True in warm_decodes[1:]  # and was warmed once nothing waited
    assert text == alone
    turn = list(first.tokens[:-1])
    shared = min(common_prefix(turn, follow_tokens), len(follow_tokens) - 1)
    assert stats.cached_prompt_tokens == shared // PREFILL_CHUNK * PREFILL_CHUNK

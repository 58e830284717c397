"""A prompt's whole chunks evaluated in one decode (``scheduling.plan_prefill``'s spans) give
the logits of the same chunks evaluated one decode each, with and without flash attention: a
prompt's output does not depend on how many of its chunks a step takes. Short prompts arriving
together share a decode (``scheduling.shared_prefill``) and answer as alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral_runtime.engine.llama import LlamaBatchContext, Row
from corral_runtime.engine.scheduling import PREFILL_CHUNK
from corral_runtime.engine.types import GenerationRequest, SamplingParams, TokenLogprob
from corral_runtime.engine.worker import ModelWorker
from tests.runtime.test_concurrency_engine import EIGHT_PROMPTS, SYSTEM, TURN, complete, loaded

pytestmark = pytest.mark.runtime

# Five whole chunks and a partial one.
PROMPT = TURN.format(SYSTEM * 4 + "Which of your breads keeps longest, and how should I store it?")
PARAMS = SamplingParams(temperature=0, num_predict=12, logprobs=3)


async def answer(worker: ModelWorker) -> tuple[str, list[TokenLogprob]]:
    stream = worker.generate(GenerationRequest(prompt=PROMPT, params=PARAMS))
    text, _ = await complete(stream)
    return text, stream.take_logprobs()


@pytest.mark.parametrize("flash_attn", [False, True], ids=["no-flash", "flash"])
async def test_a_prompt_in_spans_answers_as_in_chunks_one_decode_each(
    test_model_path: Path, flash_attn: bool
) -> None:
    async with loaded(
        test_model_path, parallel=2, max_pending=2, flash_attn=flash_attn, n_batch=PREFILL_CHUNK
    ) as worker:
        assert worker._require_context().capacity == PREFILL_CHUNK  # a chunk a decode
        tokens = len(await worker.tokenize(PROMPT))
        assert tokens > 4 * PREFILL_CHUNK and tokens % PREFILL_CHUNK
        chunked = await answer(worker)
    async with loaded(test_model_path, parallel=2, max_pending=2, flash_attn=flash_attn) as worker:
        assert worker._require_context().capacity == 512  # the whole prompt in two decodes
        spanned = await answer(worker)
    assert spanned == chunked
    assert len(chunked[1]) == PARAMS.num_predict


@pytest.mark.parametrize("flash_attn", [False, None], ids=["no-flash", "default"])
async def test_short_prompts_arriving_together_share_a_decode_and_answer_as_alone(
    test_model_path: Path, flash_attn: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared: list[int] = []  # rows of each decode holding prompt rows of several sequences
    decode = LlamaBatchContext.decode

    def watched(context: LlamaBatchContext, rows: list[Row]) -> bool:
        if len(rows) > len({row.seq_id for row in rows}) > 1:  # not one row a sequence
            shared.append(len(rows))
        return decode(context, rows)

    monkeypatch.setattr(LlamaBatchContext, "decode", watched)
    params = SamplingParams(temperature=0, num_predict=8, logprobs=2)

    async def one(worker: ModelWorker, prompt: str) -> tuple[str, list[TokenLogprob]]:
        stream = worker.generate(GenerationRequest(prompt=prompt, params=params))
        text, _ = await complete(stream)
        return text, stream.take_logprobs()

    async with loaded(test_model_path, parallel=8, max_pending=8, flash_attn=flash_attn) as worker:
        alone = [await one(worker, prompt) for prompt in EIGHT_PROMPTS[:6]]
        assert not shared
        # A long answer keeps the thread decoding while the six arrive, so they meet at a step.
        long = worker.generate(
            GenerationRequest(prompt=PROMPT, params=SamplingParams(temperature=0, num_predict=40))
        )
        await long.started()
        together = await asyncio.gather(*(one(worker, p) for p in EIGHT_PROMPTS[:6]))
        assert "".join([piece async for piece in long])
    assert together == alone
    assert shared

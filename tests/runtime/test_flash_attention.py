"""Flash attention on the CPU keeps batch invariance: llama.cpp splits the attention of a
decoding row that is its computation's only sequence over the threads once that sequence holds
256 tokens or more, summing in another order than beside other sequences, so the worker
decodes such a row beside a throwaway row of a neighbouring slot
(``LlamaBatchContext.pairs_lone_rows``, ``scheduling.lone_partners``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral_runtime.engine.types import GenerationRequest, SamplingParams, TokenLogprob
from corral_runtime.engine.worker import ModelWorker
from tests.runtime.test_concurrency_engine import EIGHT_PROMPTS, SYSTEM, TURN, complete, loaded

pytestmark = pytest.mark.runtime

QUESTION = "Which of your breads keeps longest, and how should I store it?"
LONG = TURN.format(SYSTEM * 4 + QUESTION)  # past 256 tokens, and its answer too
CROSSING = TURN.format(SYSTEM * 3 + QUESTION)
PARAMS = SamplingParams(temperature=0, num_predict=24, logprobs=3)


async def answer(worker: ModelWorker, prompt: str) -> tuple[str, list[TokenLogprob]]:
    stream = worker.generate(GenerationRequest(prompt=prompt, params=PARAMS))
    text, _ = await complete(stream)
    return text, stream.take_logprobs()


# Asked for, and unset (llama.cpp's own choice, which runs it on the CPU); a prompt past 256
# tokens, and one whose answer crosses position 256, where llama.cpp's split begins.
@pytest.mark.parametrize(
    ("asked", "prompt"),
    [(True, LONG), (None, LONG), (None, CROSSING)],
    ids=["asked", "default", "crossing"],
)
async def test_a_long_sequence_decodes_alone_as_beside_others(
    test_model_path: Path, asked: bool | None, prompt: str
) -> None:
    async with loaded(test_model_path, parallel=4, max_pending=4, flash_attn=asked) as worker:
        assert worker._require_context().pairs_lone_rows
        held = len(await worker.tokenize(prompt))
        assert held > 256 if prompt == LONG else held < 256 < held + PARAMS.num_predict
        alone = await answer(worker, prompt)

        async def later(text: str, delay: float) -> tuple[str, list[TokenLogprob]]:
            await asyncio.sleep(delay)
            return await answer(worker, text)

        # Three short ones start just after it and decode beside it.
        together = await asyncio.gather(
            answer(worker, prompt), *(later(p, 0.05) for p in EIGHT_PROMPTS[:3])
        )
        assert together[0] == alone
        assert len(alone[1]) == PARAMS.num_predict


async def test_without_flash_attention_no_row_is_thrown_away(test_model_path: Path) -> None:
    async with loaded(test_model_path, parallel=2, max_pending=2, flash_attn=False) as worker:
        assert not worker._require_context().pairs_lone_rows
        steps, computations = worker.decode_steps, worker.decode_computations
        await answer(worker, LONG)
        assert worker.decode_computations - computations == worker.decode_steps - steps > 0

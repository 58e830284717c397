"""Which slot a request takes, on the real model: a new conversation that shares only a system
prompt with another conversation's longer history takes a free empty slot instead of
overwriting that history (it copies the shared chunks from there), so the other conversation's
next turn still reuses all of it (its answer's chunks included, which its idle slot warmed
meanwhile)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral_runtime.engine.llama import Row
from corral_runtime.engine.scheduling import PREFILL_CHUNK, StepCosts, common_prefix
from corral_runtime.engine.types import SamplingParams
from tests.runtime.test_concurrency_engine import GREEDY, SYSTEM, TURN, loaded, run

pytestmark = pytest.mark.runtime

# Conversation A's own question: long enough that its evaluated history past the shared system
# prompt outweighs the system prompt's reusable chunks.
ORDER = (
    "I would like to order for a birthday party on Saturday: two sourdough loaves, one rye "
    "bread sliced thin, a dozen croissants of which half plain and half with almonds, an apple "
    "pie with extra cinnamon and a large carrot cake with 'Happy birthday, Ada' written on it in "
    "blue icing. Could you also tell me whether the carrot cake contains nuts, since one guest "
    "is allergic, and whether I can pick everything up at eight in the morning? If the carrot "
    "cake does contain nuts, please suggest another cake of the same size that does not, and "
    "tell me how much the whole order costs with and without that change. My neighbour asks "
    "too whether you bake gluten-free bread on weekdays, whether the rye bread keeps for a "
    "week, and whether you deliver to the other side of the river for a small fee. "
)


async def test_a_new_conversation_keeps_off_another_conversations_history(
    test_model_path: Path,
) -> None:
    async with loaded(test_model_path, parallel=2, max_pending=2) as worker:
        opening = TURN.format(SYSTEM + ORDER)
        answer, first = await run(worker, opening, GREEDY)
        shared = len(await worker.tokenize(TURN.format(SYSTEM)))
        own = len(await worker.tokenize(opening)) // PREFILL_CHUNK * PREFILL_CHUNK
        # The precondition of the choice: A's own history outweighs the shared chunks.
        assert own - shared > shared // PREFILL_CHUNK * PREFILL_CHUNK

        # B: the same system prompt, a question of its own. It takes the empty slot, and
        # copies the system prompt's whole chunks from A's (scheduling.shared_source).
        question = TURN.format(SYSTEM + "When do you open?")
        _, other = await run(worker, question, GREEDY)
        common = common_prefix(await worker.tokenize(opening), await worker.tokenize(question))
        assert other.cached_prompt_tokens == common // PREFILL_CHUNK * PREFILL_CHUNK > 0

        follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And the price?")
        # A's turn as its slot holds it: the answer's last token was never fed.
        turn = list(first.tokens[:-1])
        shared = common_prefix(turn, await worker.tokenize(follow_up))
        _, stats = await run(worker, follow_up, GREEDY)
        # All of A's evaluated history: its prompt's whole chunks and its answer's, warmed.
        assert stats.cached_prompt_tokens == shared // PREFILL_CHUNK * PREFILL_CHUNK > own


async def test_a_turn_whose_history_lies_apart_from_the_busy_slots_moves_beside_them(
    test_model_path: Path,
) -> None:
    """llama.cpp decodes each run of consecutive sequence ids in a computation of its own, so
    a conversation's next turn returning to its slot away from the busy ones would make every
    step two passes over the weights. Its history is copied into a free slot beside them
    instead (``scheduling.run_keeping_target``): the turn reuses all of it, answers as a fresh
    server does, and decodes in one run with the other stream."""
    async with loaded(test_model_path, parallel=3, max_pending=3) as worker:
        opening = TURN.format(SYSTEM + "When do you open?")
        # A takes slot 0 and another conversation slot 1; then a third takes the empty slot 2.
        (answer, first), _ = await asyncio.gather(
            run(worker, opening, GREEDY), run(worker, TURN.format("Do you sell rye?"), GREEDY)
        )
        assert worker._slots[0].cached[: len(first.tokens) - 1] == list(first.tokens[:-1])
        context = worker._require_context()
        decoded: list[list[int]] = []
        plain_decode = context.decode

        def recording(rows: list[Row]) -> bool:
            decoded.append([row.seq_id for row in rows])
            return plain_decode(rows)

        context.decode = recording  # type: ignore[method-assign]
        long_answer = SamplingParams(temperature=0, num_predict=48)
        other = asyncio.create_task(run(worker, TURN.format(ORDER), long_answer))
        for _ in range(3000):  # until it decodes, 30 s at most
            sequence = worker._slots[2].sequence
            if sequence is not None and not sequence.prefilling:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the third conversation never started decoding in slot 2")

        # A's next turn while the third conversation decodes in slot 2.
        follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And on Sundays?")
        text, stats = await run(worker, follow_up, GREEDY)
        await other
        history = common_prefix(list(first.tokens[:-1]), await worker.tokenize(follow_up))
        assert stats.cached_prompt_tokens == history // PREFILL_CHUNK * PREFILL_CHUNK > 0
        assert worker._slots[1].cached[:history] == list(first.tokens[:history])
        # Every step decoded the two streams in one run: sequences 1 and 2, never 0 and 2.
        pairs = [ids for ids in decoded if len(ids) == 2]
        assert pairs and all(ids == [1, 2] for ids in pairs)

    async with loaded(test_model_path, parallel=1, max_pending=1) as fresh:
        assert (await run(fresh, follow_up, GREEDY))[0] == text


class FixedCosts(StepCosts):
    """Step costs that measurements do not move."""

    def observe(self, rows: int, seconds: float) -> None:
        pass


async def test_a_free_slot_between_two_decoding_ones_is_filled_and_keeps_its_cache(
    test_model_path: Path,
) -> None:
    """Where the steps measured say one computation of the joined rows is shorter than two
    apart, a throwaway row for the free slot between two decoding ones joins their runs
    (``scheduling.gap_fillers``): both streams answer as alone, every step is one computation,
    and the free slot's cached conversation is still whole for its next turn."""
    async with loaded(test_model_path, parallel=3, max_pending=3, warm_turns=False) as worker:
        short = TURN.format("When do you open?")
        # B's history (slot 1) is longer than A's (slot 0), so a new conversation overwrites A's.
        (_, _), (answer, first) = await asyncio.gather(
            run(worker, short, GREEDY), run(worker, TURN.format(SYSTEM + ORDER), GREEDY)
        )
        kept, evaluated = list(worker._slots[1].cached), worker._slots[1].evaluated
        assert kept[: len(first.tokens) - 1] == list(first.tokens[:-1])
        # Costs where three rows in one computation take less than two lone ones (a GPU's, not
        # these two cores', where two lone rows are cheaper), kept as they are.
        worker._step_costs = FixedCosts({1: 0.010, 3: 0.015})
        steps, computations = worker.decode_steps, worker.decode_computations
        long_answer = SamplingParams(temperature=0, num_predict=24)
        prompts = [TURN.format("Do you sell rye?"), TURN.format("Is the carrot cake vegan?")]
        together = await asyncio.gather(*(run(worker, p, long_answer) for p in prompts))
        # The first took the empty slot 2, the second A's slot 0; slot 1 holds what it held.
        for slot, prompt in zip((2, 0), prompts, strict=True):
            tokens = await worker.tokenize(prompt)
            assert worker._slots[slot].cached[: len(tokens)] == tokens
        assert worker._slots[1].cached == kept
        assert worker.decode_computations - computations == worker.decode_steps - steps > 20

        follow_up = (
            TURN.format(SYSTEM + ORDER) + answer + "<end_of_turn>\n" + TURN.format("Thanks!")
        )
        text, stats = await run(worker, follow_up, GREEDY)
        assert stats.cached_prompt_tokens == evaluated >= PREFILL_CHUNK

    async with loaded(test_model_path, parallel=1, max_pending=1) as fresh:
        assert [(await run(fresh, p, long_answer))[0] for p in prompts] == [t for t, _ in together]
        assert (await run(fresh, follow_up, GREEDY))[0] == text

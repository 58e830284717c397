"""Which slot a request takes, on the real model: a new conversation that shares only a system
prompt with another conversation's longer history takes a free empty slot instead of
overwriting that history (it copies the shared chunks from there), so the other conversation's
next turn still reuses all of it (its answer's chunks included, which its idle slot warmed
meanwhile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.engine.scheduling import PREFILL_CHUNK, common_prefix
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

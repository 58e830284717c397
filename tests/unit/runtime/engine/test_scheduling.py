"""The continuous-batching scheduler's decisions: slot choice, prefix reuse, prompt chunks,
generation budgets and the end of a sequence."""

from __future__ import annotations

import pytest

from corral_runtime.engine.scheduling import (
    KV_BUDGET_DIVISOR,
    LONE_ROW_TOKENS,
    MAX_DEFAULT_PARALLEL,
    PREFILL_CHUNK,
    SlotView,
    StepCosts,
    WarmView,
    batch_capacity,
    busy_runs_added,
    choose_slot,
    common_prefix,
    copy_saves,
    decode_runs,
    default_parallel,
    done_reason,
    dropped_history,
    evaluated_prefix,
    gap_fillers,
    generation_budget,
    lone_partners,
    next_warm_chunk,
    parallel_for_memory,
    plan_prefill,
    prompt_chunk,
    reusable_prefix,
    run_keeping_target,
    shared_prefill,
    shared_source,
    warm_start,
)

pytestmark = pytest.mark.unit


class TestDefaultParallel:
    @pytest.mark.parametrize(
        ("n_ctx", "expected"), [(2048, 8), (4096, 4), (8192, 2), (16384, 1), (131072, 1)]
    )
    def test_slots_shrink_as_the_context_grows(self, n_ctx: int, expected: int) -> None:
        assert default_parallel(n_ctx) == expected

    def test_small_contexts_are_capped(self) -> None:
        assert default_parallel(256) == MAX_DEFAULT_PARALLEL


MIB = 1 << 20
GIB = 1 << 30


class TestParallelForMemory:
    def test_slots_hold_a_full_context_each_within_a_quarter_of_the_budget(self) -> None:
        # Llama 3.1 8B's f16 cache: 128 KiB a token, 512 MiB a slot at 4096 tokens.
        assert KV_BUDGET_DIVISOR == 4
        assert parallel_for_memory(512 * MIB, 16 * GIB, 5 * GIB) == 8
        assert parallel_for_memory(512 * MIB, 8 * GIB, 5 * GIB) == 4
        assert parallel_for_memory(512 * MIB, 8 * GIB - 1, 5 * GIB) == 3

    def test_a_small_cache_gets_the_most_slots(self) -> None:
        # The test model: 18 KiB a token, 72 MiB a slot at 4096 tokens, on a 22 GiB machine.
        assert MAX_DEFAULT_PARALLEL == 16
        assert parallel_for_memory(72 * MIB, 22 * GIB, 300 * MIB) == MAX_DEFAULT_PARALLEL

    def test_the_weights_leave_room_for_fewer_slots(self) -> None:
        # 7 GiB of weights and graph in an 8 GiB budget leave 1 GiB: two slots, not four.
        assert parallel_for_memory(512 * MIB, 8 * GIB, 7 * GIB) == 2

    def test_at_least_one_slot_even_where_none_fits(self) -> None:
        # The load then decides (evict, wait or refuse) with the one slot's estimate.
        assert parallel_for_memory(512 * MIB, 256 * MIB, 0) == 1
        assert parallel_for_memory(512 * MIB, 4 * GIB, 5 * GIB) == 1
        assert parallel_for_memory(0, 4 * GIB, 0) == MAX_DEFAULT_PARALLEL


C = 4  # a small prompt chunk keeps the token lists readable
N = 4000  # a context for which a copy pays from one chunk (of C) on


class TestPrefix:
    def test_common_prefix(self) -> None:
        assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
        assert common_prefix([1, 2], [1, 2, 3]) == 2
        assert common_prefix([], [1]) == 0
        assert common_prefix([5], [1]) == 0

    def test_reuse_is_whole_chunks_of_the_shared_prefix(self) -> None:
        cached = list(range(12))
        assert reusable_prefix(cached, 12, [*range(10), 99, 98], C) == 8
        assert reusable_prefix(cached, 12, [0, 1, 2, 99, 5, 6], C) == 0

    def test_the_last_prompt_token_is_always_evaluated(self) -> None:
        prompt = list(range(8))
        assert reusable_prefix(prompt, 8, prompt, C) == 4
        assert reusable_prefix(list(range(12)), 12, prompt, C) == 4

    def test_generated_tokens_and_partial_chunks_are_not_reused(self) -> None:
        # 6 prompt tokens (one whole chunk evaluated) and 4 generated ones in the cache.
        cached = [*range(6), 50, 51, 52, 53]
        follow_up = [*cached, 60, 61, 62]
        assert reusable_prefix(cached, evaluated_prefix(6, C), follow_up, C) == 4

    def test_evaluated_prefix_counts_whole_chunks(self) -> None:
        assert evaluated_prefix(0, C) == 0
        assert evaluated_prefix(7, C) == 4
        assert evaluated_prefix(8, C) == 8

    def test_an_empty_prompt_reuses_nothing(self) -> None:
        assert reusable_prefix([1, 2], 2, [], C) == 0


class TestChooseSlot:
    def test_the_slot_reusing_most_wins(self) -> None:
        prompt = list(range(10))
        free = [
            SlotView(list(range(5)), 4, 5.0),
            SlotView(list(range(12)), 12, 1.0),
            SlotView(list(range(12)), 4, 9.0),
        ]
        choice = choose_slot(free, prompt, C)
        assert (choice.index, choice.reuse) == (1, 8)

    def test_without_reuse_the_least_recently_used_slot(self) -> None:
        free = [SlotView([7], 0, 5.0), SlotView([8], 0, 1.0), SlotView([], 0, 3.0)]
        choice = choose_slot(free, [1, 2], C)
        assert (choice.index, choice.reuse) == (1, 0)

    def test_equal_reuse_prefers_the_least_recently_used(self) -> None:
        cached = [0, 1, 2, 3, 9]
        free = [SlotView(cached, 4, 4.0), SlotView(cached, 4, 2.0)]
        choice = choose_slot(free, [0, 1, 2, 3, 4, 5], C)
        assert (choice.index, choice.reuse) == (1, 4)

    def test_a_new_conversation_leaves_a_longer_history_alone(self) -> None:
        # Conversation A's slot: a shared system prompt (0-3) and 8 tokens of its own history.
        a = SlotView([0, 1, 2, 3, *range(10, 18)], 12, 9.0)
        empty = SlotView([], 0, 1.0)
        new = [0, 1, 2, 3, 50, 51]  # B: the same system prompt, then its own question
        choice = choose_slot([a, empty], new, C)
        assert (choice.index, choice.reuse) == (1, 0)
        # A's next turn continues its cache: nothing of it is dropped, all of it reused.
        assert dropped_history(a, [*a.cached, 60, 61]) == 0

    def test_a_shared_prefix_outweighing_what_it_drops_is_reused(self) -> None:
        a = SlotView([*range(8), 20, 21, 22, 23], 12, 9.0)  # 8 shared tokens, 4 of A's own
        empty = SlotView([], 0, 1.0)
        choice = choose_slot([a, empty], [*range(8), 50, 51], C)
        assert (choice.index, choice.reuse) == (0, 8)

    def test_decode_runs(self) -> None:
        assert decode_runs([]) == 0
        assert decode_runs([3]) == 1
        assert decode_runs([0, 1, 2, 3]) == 1
        assert decode_runs([0, 2, 4, 6]) == 4
        assert decode_runs([0, 1, 5, 6, 9]) == 3

    def test_busy_runs_added(self) -> None:
        busy = {0, 1, 3}
        assert busy_runs_added(2, busy) == -1  # fills the gap: 0-3 is one run
        assert busy_runs_added(4, busy) == 0  # extends 3
        assert busy_runs_added(6, busy) == 1  # a run of its own
        assert busy_runs_added(0, set()) == 1

    def test_without_reuse_the_slot_that_keeps_busy_ids_together(self) -> None:
        # Sequences 0, 1 and 3 decode: 2 fills their gap, even though 5 was used longest ago.
        free = [SlotView([], 0, 1.0, 2), SlotView([], 0, 0.0, 5), SlotView([], 0, 2.0, 4)]
        choice = choose_slot(free, [1, 2], C, busy={0, 1, 3})
        assert choice.index == 0
        # Then extending a run beats starting a new one.
        choice = choose_slot(free[1:], [1, 2], C, busy={0, 1, 2, 3})
        assert choice.index == 1

    def test_reuse_wins_over_keeping_busy_ids_together(self) -> None:
        free = [SlotView([], 0, 1.0, 2), SlotView(list(range(8)), 8, 0.0, 7)]
        choice = choose_slot(free, list(range(10)), C, busy={1, 3})
        assert (choice.index, choice.reuse) == (1, 8)

    def test_no_free_slot_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no free slot"):
            choose_slot([], [1])


HISTORY = tuple(range(8))


class TestRunKeepingTarget:
    def test_a_reused_cache_that_would_start_a_run_moves_beside_the_busy_ones(self) -> None:
        # Sequences 0-3 decode; the conversation's history lies in slot 7.
        free = [SlotView([], 0, 5.0, 4), SlotView(HISTORY, 8, 1.0, 7)]
        assert run_keeping_target(free, 1, 8, busy={0, 1, 2, 3}) == 0

    def test_joining_two_runs_first_never_over_history_then_least_recently_used(self) -> None:
        prompt = [*HISTORY, 9]
        other = [100, 101, 102, 103]  # another conversation's evaluated history
        free = [
            SlotView([], 0, 3.0, 2),  # extends 0-1
            SlotView([], 0, 1.0, 5),  # joins 4 and 6-7: the first
            SlotView(HISTORY, 8, 0.0, 10),
        ]
        busy = {0, 1, 4, 6, 7}
        assert run_keeping_target(free, 2, 8, busy, prompt) == 1
        extending = [
            SlotView(other, 4, 0.0, 2),  # extends 0-1 but would drop 4 tokens of history
            SlotView([], 0, 9.0, 3),  # extends 4, drops nothing: it, though used last
            SlotView(HISTORY, 8, 0.0, 10),
        ]
        assert run_keeping_target(extending, 2, 8, {0, 1, 4}, prompt) == 1
        assert run_keeping_target(extending[::2], 1, 8, {0, 1, 4}, prompt) is None
        idle = [SlotView([], 0, 9.0, 2), SlotView([], 0, 1.0, 5), SlotView(HISTORY, 8, 0, 9)]
        assert run_keeping_target(idle, 2, 8, {1, 4}, prompt) == 1  # used longest ago

    @pytest.mark.parametrize(
        ("chosen_seq", "reuse", "busy"),
        [
            (4, 8, {0, 1, 2, 3}),  # already extends the run
            (7, 0, {0, 1, 2, 3}),  # nothing reused: nothing to move
            (7, 8, set()),  # nothing busy: any slot is a run of one
            (7, 8, {0, 2}),  # no free slot adjoins a busy one (only 9 is free besides)
        ],
    )
    def test_stays_where_it_is(self, chosen_seq: int, reuse: int, busy: set[int]) -> None:
        free = [SlotView([], 0, 0.0, 9), SlotView(HISTORY, 8, 1.0, chosen_seq)]
        assert run_keeping_target(free, 1, reuse, busy) is None


class TestSharedSource:
    def test_a_copy_pays_for_a_chunk_and_one_token_per_thousand_of_the_context(self) -> None:
        assert copy_saves(64, 4096) and not copy_saves(63, 4096)
        assert not copy_saves(128, 131072) and copy_saves(192, 131072)
        assert copy_saves(4, 1000, 4) and not copy_saves(4, 4001, 4)

    def test_the_slot_holding_the_most_of_the_prompt_beyond_the_own_reuse(self) -> None:
        prompt = list(range(10))
        others = [
            SlotView([0, 1, 2, 3, 4, 5, 50], 6, 1.0),  # 4 reusable: no more than the own 4
            SlotView([0, 1, 2, 3, 4, 5, 6, 7, 60], 9, 2.0),  # 8: a chunk more
            SlotView(list(range(10)), 3, 3.0),  # none: only 3 evaluated as prompt
        ]
        assert shared_source(others, prompt, 4, N, C) == (1, 8)
        assert shared_source(others, prompt, 0, N, C) == (1, 8)  # the most, not the first

    def test_none_without_a_whole_chunk_more_than_the_own_reuse(self) -> None:
        prompt = list(range(8))
        others = [SlotView([0, 1, 2, 3, 4, 5, 70], 6, 1.0)]  # 4 reusable: one chunk
        assert shared_source(others, prompt, 0, N, C) == (0, 4)
        assert shared_source(others, prompt, 1, N, C) is None  # less than a chunk more
        assert shared_source(others, prompt, 4, N, C) is None
        assert shared_source([], prompt, 0, N, C) is None

    def test_never_the_prompts_last_token(self) -> None:
        # Its logits choose the first generated token, so it is always evaluated.
        source = [SlotView([0, 1, 2, 3, 9], 5, 1.0)]
        assert shared_source(source, [0, 1, 2, 3], 0, N, C) is None
        assert shared_source(source, [0, 1, 2, 3, 4], 0, N, C) == (0, 4)


class TestWarmStart:
    def test_the_first_chunk_past_the_evaluated_prefix(self) -> None:
        # A turn of 289 tokens whose prompt left 192 evaluated: one whole chunk to warm.
        assert warm_start(289, 192) == 192
        assert warm_start(289, 256) is None

    def test_a_last_partial_chunk_is_never_warmed(self) -> None:
        assert warm_start(255, 192) is None
        assert warm_start(256, 192) == 192

    def test_nothing_to_warm_in_an_empty_or_fully_evaluated_slot(self) -> None:
        assert warm_start(0, 0) is None
        assert warm_start(128, 128) is None

    def test_the_chunk_size_sets_the_boundaries(self) -> None:
        assert warm_start(40, 16, chunk=16) == 16
        assert warm_start(40, 32, chunk=16) is None


class TestNextWarmChunk:
    def test_the_turn_that_finished_first_is_warmed_first(self) -> None:
        slots = [WarmView(300, 192, last_used=2.0), WarmView(300, 128, last_used=1.0)]
        assert next_warm_chunk(slots) == (1, 128)

    def test_slots_with_nothing_to_warm_are_passed_over(self) -> None:
        slots = [WarmView(200, 192, last_used=0.0), WarmView(0, 0, last_used=-1.0)]
        assert next_warm_chunk(slots) is None
        assert next_warm_chunk([*slots, WarmView(200, 64, last_used=5.0)]) == (2, 64)

    def test_no_warming_while_prompt_work_waits(self) -> None:
        slots = [WarmView(300, 0, last_used=0.0)]
        assert next_warm_chunk(slots, prompt_work=True) is None
        assert next_warm_chunk(slots, prompt_work=False) == (0, 0)


class TestPromptChunk:
    def test_chunks_end_at_aligned_boundaries(self) -> None:
        assert prompt_chunk(0, 10, C) == 4
        assert prompt_chunk(4, 10, C) == 4
        assert prompt_chunk(8, 10, C) == 2

    def test_after_a_reused_prefix_the_same_boundaries(self) -> None:
        # Reuse is whole chunks, so feeding resumes on a boundary: same chunks as from scratch.
        assert prompt_chunk(8, 20, C) == 4

    def test_a_short_prompt_is_one_chunk(self) -> None:
        assert prompt_chunk(0, 3, C) == 3

    def test_the_default_chunk(self) -> None:
        assert prompt_chunk(0, 1000) == PREFILL_CHUNK

    def test_nothing_remaining_feeds_nothing(self) -> None:
        assert prompt_chunk(10, 10, C) == 0

    def test_a_batch_holds_a_row_per_slot_or_a_span(self) -> None:
        assert batch_capacity(64, 8) == 64
        assert batch_capacity(4, 8) == 8


class TestPlanPrefill:
    def test_several_prompts_start_at_one_step(self) -> None:
        assert plan_prefill([(0, 3), (0, 2), (0, 4)], 16, C) == [(0, 3), (1, 2), (2, 4)]

    def test_the_longest_waiting_prompt_goes_first_in_aligned_chunks(self) -> None:
        # 10 tokens with 2 already fed: chunks end at 4, 8 and 10.
        assert plan_prefill([(2, 10), (0, 3)], 16, C) == [(0, 2), (0, 4), (0, 2), (1, 3)]

    def test_the_budget_bounds_a_step(self) -> None:
        assert plan_prefill([(0, 10), (0, 3)], 8, C) == [(0, 4), (0, 4)]
        assert plan_prefill([(8, 10), (0, 3)], 4, C) == [(0, 2)]

    def test_one_chunk_even_when_over_the_budget(self) -> None:
        assert plan_prefill([(0, 10)], 1, C) == [(0, 4)]

    def test_nothing_to_feed(self) -> None:
        assert plan_prefill([], 16, C) == []

    def test_whole_chunks_of_one_prompt_share_a_span_and_its_partial_chunk_stays_apart(
        self,
    ) -> None:
        assert plan_prefill([(0, 10)], 16, C, span=8) == [(0, 8), (0, 2)]
        assert plan_prefill([(0, 20)], 32, C, span=8) == [(0, 8), (0, 8), (0, 4)]
        # After an unaligned start, the piece up to the boundary is alone too.
        assert plan_prefill([(2, 14)], 16, C, span=16) == [(0, 2), (0, 8), (0, 2)]
        # Spans never join two prompts.
        assert plan_prefill([(0, 9), (0, 8)], 32, C, span=16) == [(0, 8), (0, 1), (1, 8)]

    def test_a_span_stays_within_the_budget(self) -> None:
        assert plan_prefill([(0, 20)], 8, C, span=16) == [(0, 8)]
        assert plan_prefill([(0, 20)], 1, C, span=16) == [(0, 4)]


class TestSharedPrefill:
    def test_the_short_last_pieces_of_several_prompts_share_a_decode(self) -> None:
        # (start, tokens, ends its prompt); chunks of 4.
        assert shared_prefill([(0, 3, True), (0, 2, True), (8, 1, True)], C, 16) == [0, 1, 2]
        # Whole chunks, and pieces a prompt goes on after, stay alone.
        assert (
            shared_prefill([(0, 4, False), (4, 3, True), (0, 4, True), (2, 2, False)], C, 16) == []
        )
        assert shared_prefill([(0, 8, False), (8, 3, True), (0, 2, True)], C, 16) == [1, 2]

    def test_one_piece_alone_shares_nothing(self) -> None:
        assert shared_prefill([(0, 3, True), (0, 4, True)], C, 16) == []

    def test_past_the_bound_a_piece_stays_alone(self) -> None:
        assert shared_prefill([(0, 3, True), (6, 3, True), (0, 2, True)], C, 16, below=8) == [0, 2]
        assert shared_prefill([(0, 3, True), (0, 2, True)], C, 16, below=2) == []

    def test_the_pieces_fit_one_decode(self) -> None:
        assert shared_prefill([(0, 3, True), (0, 3, True), (0, 3, True)], C, 7) == [0, 1]


class TestBudgetAndEnd:
    def test_budget_is_what_fits_in_the_context(self) -> None:
        assert generation_budget(100, 1024, -1) == 924
        assert generation_budget(100, 1024, 10) == 10
        assert generation_budget(1024, 1024, -1) == 0
        assert generation_budget(10, 1024, 0) == 0

    def test_end_of_generation_and_stop_strings_stop(self) -> None:
        assert done_reason(end_of_generation=True, stop_matched=False, count=3, budget=9) == "stop"
        assert done_reason(end_of_generation=False, stop_matched=True, count=3, budget=9) == "stop"

    def test_the_budget_ends_with_length(self) -> None:
        assert done_reason(end_of_generation=False, stop_matched=False, count=9, budget=9) == (
            "length"
        )

    def test_otherwise_it_goes_on(self) -> None:
        assert done_reason(end_of_generation=False, stop_matched=False, count=3, budget=9) is None


class TestStepCosts:
    def test_measured_counts_average_and_others_lie_on_the_line_between(self) -> None:
        costs = StepCosts()
        costs.observe(4, 0.040)
        assert costs.estimate(4) == 0.040
        assert costs.estimate(8) is None  # one count known: no line yet
        costs.observe(8, 0.050)
        costs.observe(8, 0.060)  # a fifth of the way to the new measurement
        assert costs.estimate(8) == pytest.approx(0.052)
        assert costs.estimate(6) == pytest.approx(0.046)
        assert costs.estimate(12) == pytest.approx(0.064)  # past the largest: the same line
        assert costs.estimate(2) is None  # below the smallest: unknown


class TestGapFillers:
    @staticmethod
    def costs(per_step: float, per_row: float) -> StepCosts:
        return StepCosts({1: per_step + per_row, 16: per_step + 16 * per_row})

    def test_gaps_are_filled_where_a_step_is_mostly_the_pass_over_the_weights(self) -> None:
        costs = self.costs(per_step=0.030, per_row=0.002)
        assert gap_fillers([0, 2, 4, 6], range(16), costs.estimate) == [1, 3, 5]
        assert gap_fillers([0, 1, 5, 6], {2, 3, 4}, costs.estimate) == [2, 3, 4]

    def test_runs_stay_apart_where_rows_cost_more_than_a_pass(self) -> None:
        costs = self.costs(per_step=0.002, per_row=0.030)
        assert gap_fillers([0, 2, 4, 6], range(16), costs.estimate) == []

    def test_a_gap_with_a_slot_that_cannot_be_filled_stays(self) -> None:
        costs = self.costs(per_step=0.030, per_row=0.002)
        # 3 is not free (a prompt's slot, or a full context): 4 stays a run of its own, while
        # 0 and 2 are joined through 1.
        assert gap_fillers([0, 2, 4], {1, 5}, costs.estimate) == [1]
        assert gap_fillers([0, 1, 2], range(16), costs.estimate) == []  # one run already

    def test_nothing_is_filled_before_steps_were_measured(self) -> None:
        assert gap_fillers([0, 2], range(16), StepCosts().estimate) == []


class TestLonePartners:
    def test_a_long_sequence_alone_in_its_run_gets_a_neighbour(self) -> None:
        assert lone_partners([3], {3: 300}, spare={2, 4}) == [4]
        assert lone_partners([3], {3: 300}, spare={2}) == [2]
        # 5 beside 3's partner 4: one partner serves both.
        assert lone_partners([3, 5], {3: 300, 5: 300}, spare={0, 1, 2, 4, 6}) == [4]

    def test_short_sequences_runs_of_several_and_no_spare_neighbour_stay(self) -> None:
        assert lone_partners([3], {3: LONE_ROW_TOKENS - 1}, spare={2, 4}) == []
        assert lone_partners([3], {3: LONE_ROW_TOKENS}, spare={2, 4}) == [4]
        assert lone_partners([3, 4], {3: 300, 4: 300}, spare={2, 5}) == []
        assert lone_partners([3], {3: 300}, spare={0, 6}) == []
        # A filler already beside it (a position of its own is not a decoding row's).
        assert lone_partners([3, 4], {3: 300}, spare={2}) == []

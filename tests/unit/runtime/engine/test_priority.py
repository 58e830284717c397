"""Request priorities: the header's classes, and which waiting request takes a free slot
(class first, aging so nobody starves, share caps while another class waits, FIFO among
equals), and which decodes a newly arrived interactive request may stop."""

from __future__ import annotations

from typing import get_args

import pytest

from corral_runtime.engine.priority import (
    DEFAULT_PRIORITY,
    MAX_PAUSED_STEPS,
    PRIORITY_CLASSES,
    DecodingView,
    PriorityPolicy,
    QueuedView,
    UnknownPriorityError,
    capped_classes,
    effective_rank,
    interruptible,
    may_take_slot,
    next_admitted,
    parse_priority,
    paused_rows,
    prefill_first,
    prefill_order,
    share_cap,
    total_slots,
)
from corral_runtime.settings import PriorityClass, RuntimeSettings

pytestmark = pytest.mark.unit

INT, BAT = "interactive", "batch"
POLICY = PriorityPolicy(aging_s=10.0)


def q(priority: str, waited_s: float) -> QueuedView:
    return QueuedView(priority, waited_s)


class TestParsePriority:
    @pytest.mark.parametrize("value", [None, "", "  "])
    def test_no_class_is_interactive(self, value: str | None) -> None:
        assert parse_priority(value) == DEFAULT_PRIORITY == INT

    @pytest.mark.parametrize(
        ("value", "expected"), [("batch", BAT), (" Batch ", BAT), ("INTERACTIVE", INT)]
    )
    def test_classes_by_name(self, value: str, expected: str) -> None:
        assert parse_priority(value) == expected

    def test_an_unknown_class_names_the_known_ones(self) -> None:
        with pytest.raises(UnknownPriorityError, match="interactive, batch"):
            parse_priority("urgent")

    def test_the_settings_know_the_same_classes(self) -> None:
        assert get_args(PriorityClass) == PRIORITY_CLASSES


class TestOrder:
    def test_interactive_goes_before_batch_that_waited_longer(self) -> None:
        queued = [q(BAT, 3.0), q(BAT, 2.0), q(INT, 0.1)]
        assert next_admitted(queued, {BAT: 3}, 4, POLICY) == 2

    def test_within_a_class_the_longest_waiting_goes_first(self) -> None:
        assert next_admitted([q(BAT, 3.0), q(BAT, 2.0)], {}, 4, POLICY) == 0
        assert next_admitted([q(INT, 0.5), q(BAT, 9.0), q(INT, 0.4)], {}, 4, POLICY) == 0

    def test_one_class_alone_is_served_in_arrival_order(self) -> None:
        queued = [q(INT, 5.0 - i) for i in range(5)]
        assert next_admitted(queued, {}, 2, POLICY) == 0


class TestAging:
    def test_rank_falls_by_one_class_per_aging_period(self) -> None:
        assert effective_rank(BAT, 0.0, 10.0) == 1.0
        assert effective_rank(BAT, 10.0, 10.0) == 0.0
        assert effective_rank(INT, 5.0, 10.0) == -0.5

    def test_a_batch_request_that_waited_long_enough_beats_a_fresh_interactive_one(self) -> None:
        assert next_admitted([q(BAT, 10.5), q(INT, 0.2)], {}, 4, POLICY) == 0

    def test_not_before_it_has_waited_that_long(self) -> None:
        assert next_admitted([q(BAT, 9.0), q(INT, 0.2)], {}, 4, POLICY) == 1

    def test_a_stream_of_interactive_requests_cannot_starve_batch(self) -> None:
        # Every round a fresh interactive request arrives and one slot frees; the batch
        # request is taken once it has aged past the newcomers.
        rounds = next(
            (n for n in range(100) if next_admitted([q(BAT, n), q(INT, 0.5)], {}, 4, POLICY) == 0),
            None,
        )
        assert rounds == 11


class TestShareCaps:
    def test_cap_is_the_share_of_slots_rounded_down_and_at_least_one(self) -> None:
        assert share_cap(0.75, 4) == 3
        assert share_cap(0.5, 3) == 1
        assert share_cap(0.1, 4) == 1
        assert share_cap(1.0, 8) == 8
        assert share_cap(0.3, 10) == 3

    def test_a_class_at_its_share_yields_to_another_waiting_class(self) -> None:
        # Interactive holds 2 of 4 slots (its cap at 0.5): a batch request that arrived later
        # and ranks lower still takes the free slot.
        policy = PriorityPolicy(aging_s=10.0, shares={INT: 0.5})
        queued = [q(INT, 1.0), q(BAT, 0.1)]
        assert capped_classes([INT, BAT], {INT: 2}, 4, policy.shares) == {INT}
        assert next_admitted(queued, {INT: 2}, 4, policy) == 1

    def test_under_its_share_the_class_order_holds(self) -> None:
        policy = PriorityPolicy(aging_s=10.0, shares={INT: 0.5})
        assert next_admitted([q(INT, 1.0), q(BAT, 5.0)], {INT: 1}, 4, policy) == 0

    def test_a_capped_class_alone_still_takes_free_slots(self) -> None:
        policy = PriorityPolicy(aging_s=10.0, shares={BAT: 0.5})
        assert capped_classes([BAT, BAT], {BAT: 3}, 4, policy.shares) == frozenset()
        assert next_admitted([q(BAT, 1.0), q(BAT, 0.5)], {BAT: 3}, 4, policy) == 0

    def test_when_every_waiting_class_is_capped_no_slot_is_left_idle(self) -> None:
        policy = PriorityPolicy(aging_s=10.0, shares={INT: 0.25, BAT: 0.25})
        queued = [q(BAT, 2.0), q(INT, 1.0)]
        assert capped_classes([BAT, INT], {INT: 1, BAT: 1}, 4, policy.shares) == {INT, BAT}
        assert next_admitted(queued, {INT: 1, BAT: 1}, 4, policy) == 1

    def test_the_cap_outranks_aging(self) -> None:
        policy = PriorityPolicy(aging_s=10.0, shares={BAT: 0.5})
        assert next_admitted([q(BAT, 100.0), q(INT, 0.1)], {BAT: 2}, 4, policy) == 1

    def test_nothing_waiting_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no waiting request"):
            next_admitted([], {}, 4, POLICY)


class TestReservedSlots:
    """Reserved slots come on top of the shared ones: 4 shared and 1 reserved here."""

    POLICY = PriorityPolicy(aging_s=10.0, reserved=1)

    def test_they_come_on_top_of_the_shared_slots(self) -> None:
        assert total_slots(4, self.POLICY) == 5
        assert total_slots(4, PriorityPolicy()) == 4

    def test_batch_takes_every_shared_slot(self) -> None:
        assert next_admitted([q(BAT, 5.0)], {BAT: 3}, 4, self.POLICY) == 0

    def test_batch_does_not_take_the_reserved_slot(self) -> None:
        assert next_admitted([q(BAT, 5.0)], {BAT: 4}, 4, self.POLICY) is None

    def test_interactive_takes_the_reserved_slot_while_batch_holds_every_shared_one(self) -> None:
        assert next_admitted([q(BAT, 50.0), q(INT, 0.1)], {BAT: 4}, 4, self.POLICY) == 1

    def test_an_interactive_request_in_a_shared_slot_costs_batch_none(self) -> None:
        assert next_admitted([q(BAT, 5.0)], {INT: 1, BAT: 3}, 4, self.POLICY) == 0
        assert may_take_slot(BAT, {INT: 2, BAT: 3}, 4, 1) is False  # every slot is busy

    def test_interactive_may_take_every_slot(self) -> None:
        assert may_take_slot(INT, {INT: 4}, 4, 1)
        assert not may_take_slot(INT, {INT: 5}, 4, 1)

    def test_aging_does_not_open_the_reserved_slot_to_batch(self) -> None:
        assert next_admitted([q(BAT, 500.0)], {BAT: 4}, 4, self.POLICY) is None

    def test_many_reserved_slots_still_leave_batch_every_shared_one(self) -> None:
        policy = PriorityPolicy(reserved=8)
        assert next_admitted([q(BAT, 1.0)], {BAT: 3}, 4, policy) == 0
        assert next_admitted([q(BAT, 1.0)], {BAT: 4}, 4, policy) is None

    def test_without_reserved_slots_batch_takes_every_slot(self) -> None:
        assert next_admitted([q(BAT, 1.0)], {BAT: 3}, 4, POLICY) == 0
        assert next_admitted([q(BAT, 1.0)], {BAT: 4}, 4, POLICY) is None

    def test_share_caps_are_shares_of_the_shared_slots(self) -> None:
        policy = PriorityPolicy(aging_s=10.0, shares={BAT: 0.5}, reserved=2)
        # Batch holds its 2 of the 4 shared slots (not of all 6) while interactive waits.
        assert next_admitted([q(BAT, 9.0), q(INT, 0.1)], {BAT: 2}, 4, policy) == 1


def rows(*classes: str | None, paused: dict[int, int] | None = None) -> list[DecodingView]:
    """Decoding rows on sequence ids 0, 1, ... of the given classes (``None``: a free slot),
    with the steps each was left out of."""
    paused = paused or {}
    return [
        DecodingView(seq_id, name, paused.get(seq_id, 0))
        for seq_id, name in enumerate(classes)
        if name is not None
    ]


class TestPausedRows:
    """A step decodes no more rows than the shared slots (4 here) while it can."""

    def test_no_more_rows_than_shared_slots_decode_all(self) -> None:
        assert paused_rows(rows(BAT, BAT, BAT, BAT), 4) == frozenset()
        assert paused_rows(rows(BAT, INT, INT), 4) == frozenset()

    def test_a_reserved_slots_row_takes_the_turn_of_the_batch_row_at_the_runs_end(self) -> None:
        # Interactive in the last slot: leaving out row 0 keeps rows 1-4 one run.
        assert paused_rows(rows(BAT, BAT, BAT, BAT, INT), 4) == {0}
        assert paused_rows(rows(INT, BAT, BAT, BAT, BAT), 4) == {4}

    def test_the_row_left_out_fewest_steps_goes_first(self) -> None:
        # Interactive in the middle: either end keeps one run; they take turns.
        assert paused_rows(rows(BAT, BAT, INT, BAT, BAT, paused={0: 1}), 4) == {4}
        assert paused_rows(rows(BAT, BAT, INT, BAT, BAT, paused={4: 1}), 4) == {0}

    def test_a_row_left_out_too_long_decodes_even_if_the_step_then_costs_more(self) -> None:
        waited = {0: MAX_PAUSED_STEPS}
        assert paused_rows(rows(BAT, BAT, BAT, BAT, INT, paused=waited), 4) == frozenset()
        assert paused_rows(rows(BAT, BAT, INT, BAT, BAT, paused=waited), 4) == {4}

    def test_nothing_is_left_out_where_that_splits_a_run(self) -> None:
        # Only row 2 is batch: leaving it out would cut 0-4 in two.
        assert paused_rows(rows(INT, INT, BAT, INT, INT), 4) == frozenset()

    def test_a_run_of_its_own_is_left_out_first(self) -> None:
        # Slot 1 free: row 0 is a run alone, so leaving it out saves a computation.
        assert paused_rows(rows(BAT, None, BAT, BAT, BAT, INT), 4) == {0}

    def test_all_of_the_excess_or_none(self) -> None:
        # Two over: rows 0 and 1 go; with only one end to give, none does.
        assert paused_rows(rows(BAT, BAT, BAT, BAT, INT, INT), 4) == {0, 1}
        assert paused_rows(rows(INT, BAT, BAT, BAT, BAT, INT), 4) == frozenset()

    def test_interactive_rows_are_never_left_out(self) -> None:
        assert paused_rows(rows(INT, INT, INT, INT, INT), 4) == frozenset()


class TestPrefillOrder:
    def test_an_interactive_prompt_goes_before_batch_prompts_that_took_slots_earlier(
        self,
    ) -> None:
        prompts = [(BAT, 1.0), (INT, 3.0), (BAT, 2.0)]
        ordered = sorted(prompts, key=lambda p: prefill_order(*p))
        assert ordered == [(INT, 3.0), (BAT, 1.0), (BAT, 2.0)]

    def test_within_a_class_the_longest_in_its_slot_goes_first(self) -> None:
        assert prefill_order(BAT, 1.0) < prefill_order(BAT, 2.0)
        assert prefill_order(INT, 1.0) < prefill_order(INT, 2.0)


class TestPrefillFirst:
    def test_an_interactive_prompt_goes_before_batch_decoding(self) -> None:
        assert prefill_first([BAT, INT], [BAT, BAT])

    def test_otherwise_decode_goes_first_as_before(self) -> None:
        assert not prefill_first([INT], [INT, INT])  # no classes in use
        assert not prefill_first([BAT], [BAT])
        assert not prefill_first([BAT], [INT])
        assert not prefill_first([INT], [])


class TestSettings:
    def test_shares_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORRAL_PRIORITY_SHARES", '{"batch": 0.75}')
        monkeypatch.setenv("CORRAL_PRIORITY_AGING_SECONDS", "12")
        monkeypatch.setenv("CORRAL_PRIORITY_RESERVED_SLOTS", "1")
        settings = RuntimeSettings()
        assert settings.priority_shares == {BAT: 0.75}
        assert settings.priority_aging_seconds == 12
        assert settings.priority_reserved_slots == 1

    @pytest.mark.parametrize("shares", ['{"urgent": 0.5}', '{"batch": 0}', '{"batch": 1.5}'])
    def test_bad_shares_are_refused(self, monkeypatch: pytest.MonkeyPatch, shares: str) -> None:
        monkeypatch.setenv("CORRAL_PRIORITY_SHARES", shares)
        with pytest.raises(ValueError, match="priority_shares"):
            RuntimeSettings()


@pytest.mark.parametrize(
    ("classes", "slot_free", "interrupted_last", "expected"),
    [
        (["batch", "batch"], True, False, True),  # batch rows, a slot for the newcomer
        (["batch"], True, False, True),  # a batch prompt's chunk
        (["batch", "interactive"], True, False, False),  # an interactive row never waits
        (["interactive"], True, False, False),
        (["batch", "batch"], False, False, False),  # no slot: the newcomer waits anyway
        (["batch", "batch"], True, True, False),  # never two batch decodes stopped in a row
        ([], True, False, False),  # nothing decoding, nothing to stop
    ],
)
def test_a_decode_is_interruptible_only_for_lower_classes_with_a_slot_free_and_not_twice(
    classes: list[str], slot_free: bool, interrupted_last: bool, expected: bool
) -> None:
    assert interruptible(classes, slot_free, interrupted_last) is expected

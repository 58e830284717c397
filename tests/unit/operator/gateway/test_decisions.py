"""The gateway's pure decisions: picker, scale-up, queue admission, activity flushes,
idle deadlines from the requests' keep_alive."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from corral_operator.api import FOREVER
from corral_operator.gateway.decisions import (
    ModelKeep,
    decide_scale_up,
    early_endpoints,
    hold_failure_message,
    may_hold,
    pick_endpoint,
    server_idle_deadline,
    should_flush_activity,
    unload_answered_here,
)
from corral_operator.gateway.topology import ServerKey, ServerView

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)


class TestPickEndpoint:
    def test_least_in_flight_wins(self) -> None:
        assert pick_endpoint(["a", "b", "c"], {"a": 3, "b": 1, "c": 2}) == "b"

    def test_unknown_endpoints_have_nothing_in_flight(self) -> None:
        assert pick_endpoint(["a", "b"], {"a": 1}) == "b"

    def test_excluded_endpoints_are_skipped(self) -> None:
        assert pick_endpoint(["a", "b"], {"a": 0, "b": 5}, exclude={"a"}) == "b"

    def test_none_when_nothing_is_left(self) -> None:
        assert pick_endpoint([], {}) is None
        assert pick_endpoint(["a"], {}, exclude={"a"}) is None

    def test_ties_rotate(self) -> None:
        picks = {pick_endpoint(["a", "b", "c"], {}, turn=t) for t in range(3)}
        assert picks == {"a", "b", "c"}


class TestScaleUp:
    def scale(self, **kwargs: int | float) -> int | None:
        args: dict[str, int | float] = {
            "desired": 0,
            "ready": 0,
            "in_flight": 0,
            "held": 0,
            "target_per_pod": 4,
            "min_replicas": 0,
            "max_replicas": 3,
        }
        args.update(kwargs)
        return decide_scale_up(**args)  # type: ignore[arg-type]

    def test_a_held_request_wakes_a_server_at_zero(self) -> None:
        assert self.scale(held=1) == 1

    def test_ten_held_requests_wake_one_replica(self) -> None:
        # No pod is ready, so there is no load to measure yet: one replica, not three.
        assert self.scale(held=10) == 1

    def test_nothing_to_do_without_demand(self) -> None:
        assert self.scale() is None
        assert self.scale(desired=1, ready=1) is None

    def test_load_above_target_grows_towards_max(self) -> None:
        assert self.scale(desired=1, ready=1, in_flight=5) == 2
        assert self.scale(desired=1, ready=1, in_flight=9) == 3
        assert self.scale(desired=1, ready=1, in_flight=100) == 3

    def test_load_at_target_stays(self) -> None:
        assert self.scale(desired=1, ready=1, in_flight=4) is None

    def test_never_scales_down(self) -> None:
        assert self.scale(desired=3, ready=3, in_flight=1) is None

    def test_max_below_one_still_allows_a_wake(self) -> None:
        assert self.scale(held=1, max_replicas=0) == 1


def test_queue_admission() -> None:
    assert may_hold(0, 1)
    assert not may_hold(1, 1)
    assert not may_hold(0, 0)


class TestActivityFlush:
    def flush(self, **kwargs: float | int | None) -> bool:
        args: dict[str, float | int | None] = {
            "now": 100.0,
            "last_flush": None,
            "interval": 10.0,
            "activity": 50.0,
            "flushed_activity": None,
            "in_flight": 0,
        }
        args.update(kwargs)
        return should_flush_activity(**args)  # type: ignore[arg-type]

    def test_first_activity_is_written(self) -> None:
        assert self.flush()

    def test_nothing_new_is_not_written(self) -> None:
        assert not self.flush(flushed_activity=50.0, last_flush=0.0)
        assert not self.flush(activity=None)

    def test_at_most_once_per_interval(self) -> None:
        assert not self.flush(activity=99.0, flushed_activity=50.0, last_flush=95.0)
        assert self.flush(activity=99.0, flushed_activity=50.0, last_flush=90.0)

    def test_requests_in_flight_are_news(self) -> None:
        assert self.flush(flushed_activity=50.0, last_flush=80.0, in_flight=1)
        assert not self.flush(flushed_activity=50.0, last_flush=95.0, in_flight=1)


class TestIdleDeadline:
    """Ollama's keep_alive per model, mapped onto the server: it may go once every model
    expired."""

    T = NOW.timestamp()

    def deadline(self, max_seconds: float | None = 3600, **models: ModelKeep) -> datetime | None:
        return server_idle_deadline(
            models, keep_alive_seconds=300, max_keep_alive_seconds=max_seconds
        )

    def test_none_while_no_request_set_a_keep_alive(self) -> None:
        assert self.deadline() is None
        assert self.deadline(a=ModelKeep(None, self.T)) is None

    def test_a_requests_keep_alive_counts_from_the_models_last_activity(self) -> None:
        assert self.deadline(a=ModelKeep(600, self.T)) == NOW + timedelta(seconds=600)
        assert self.deadline(a=ModelKeep(60, self.T)) == NOW + timedelta(seconds=60)

    def test_zero_lets_the_server_go_now(self) -> None:
        assert self.deadline(a=ModelKeep(0, self.T)) == NOW

    def test_forever_is_bounded_by_the_servers_max(self) -> None:
        assert self.deadline(a=ModelKeep(math.inf, self.T)) == NOW + timedelta(hours=1)
        assert self.deadline(a=ModelKeep(10**6, self.T)) == NOW + timedelta(hours=1)
        assert self.deadline(None, a=ModelKeep(math.inf, self.T)) == FOREVER
        assert self.deadline(None, a=ModelKeep(1e300, self.T)) == FOREVER  # no overflow

    def test_the_furthest_model_decides(self) -> None:
        # One model let go (0), another without a keep_alive: the server's keepAliveSeconds.
        both = self.deadline(a=ModelKeep(0, self.T), b=ModelKeep(None, self.T - 100))
        assert both == NOW + timedelta(seconds=200)
        assert self.deadline(a=ModelKeep(0, self.T), b=ModelKeep(900, self.T - 100)) == (
            NOW + timedelta(seconds=800)
        )


def test_hold_failure_message_names_model_and_reason() -> None:
    message = hold_failure_message("gemma3:270m", 600.2, "0/1 nodes are available")
    assert "gemma3:270m" in message
    assert "600s" in message
    assert message.endswith(": 0/1 nodes are available")
    assert hold_failure_message("m", 1, None).endswith("within 1s")


def test_early_endpoints_are_starting_pods_probed_recently() -> None:
    probed = {"10.0.0.1:11434": 100.0, "10.0.0.2:11434": 50.0, "10.0.0.9:11434": 100.0}
    starting = ("10.0.0.1:11434", "10.0.0.2:11434", "10.0.0.3:11434")
    assert early_endpoints(starting, probed, now=110.0, trust_seconds=30.0) == ("10.0.0.1:11434",)
    assert early_endpoints(starting, {}, now=110.0, trust_seconds=30.0) == ()


class TestUnloadAnsweredHere:
    KEY: ServerKey = ("ns", "gemma")

    def test_a_server_at_zero_replicas_is_not_woken_to_unload(self) -> None:
        assert unload_answered_here(True, ServerView(key=self.KEY, desired=0))

    def test_nor_one_scaling_down_or_still_starting(self) -> None:
        assert unload_answered_here(True, ServerView(key=self.KEY, endpoints=("a:1",), desired=0))
        assert unload_answered_here(True, ServerView(key=self.KEY, desired=1))

    def test_a_server_with_pods_unloads_on_them(self) -> None:
        assert not unload_answered_here(
            True, ServerView(key=self.KEY, endpoints=("a:1",), desired=1)
        )

    def test_other_requests_are_never_answered_here(self) -> None:
        assert not unload_answered_here(False, ServerView(key=self.KEY, desired=0))

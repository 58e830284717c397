"""The cache-aware choice of a pod: the text a request's prompt comes from, its chained prefix
hashes, the bounded per-pod estimate of what each pod holds, and the score of expected prefix
reuse against load; then the dispatcher that keeps the estimate per server and forgets pods
that leave the routing table."""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
import pytest

from corral_operator.gateway.affinity import (
    CACHE_AWARE,
    HIT,
    LEAST_IN_FLIGHT,
    MISS,
    SPILL,
    PrefixIndex,
    load_bound,
    pick_cache_aware,
    prefix_hashes,
    request_text,
    routing_outcome,
)
from corral_operator.gateway.backend import StaticBackend
from corral_operator.gateway.dispatcher import Dispatcher
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.protocol import ROUTED, request_facts
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ServerKey, ServerView, Snapshot, server_view

pytestmark = pytest.mark.unit

MODEL = "gemma3:270m"
SYSTEM = "You are a terse assistant who answers in one short sentence. " * 4


def conversation(topic: int, turns: int) -> list[dict[str, str]]:
    """A chat ``turns`` user messages long, each answered but the last (a paragraph each)."""
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        ask = f"Tell me fact {turn} about topic {topic}, with the reasons for it. " * 4
        messages.append({"role": "user", "content": ask})
        if turn < turns - 1:
            answer = f"Fact {turn} of {topic} is that it is dull, for several reasons. " * 4
            messages.append({"role": "assistant", "content": answer})
    return messages


def chat_prefix(topic: int, turns: int) -> tuple[bytes, ...]:
    return prefix_hashes(MODEL, request_text({"messages": conversation(topic, turns)}))


class TestRequestText:
    def test_each_turn_starts_with_the_text_of_the_turn_before(self) -> None:
        first = request_text({"messages": conversation(1, 1)})
        second = request_text({"messages": conversation(1, 2)})
        assert first and second.startswith(first) and len(second) > len(first)

    def test_roles_count(self) -> None:
        as_user = request_text({"messages": [{"role": "user", "content": "hi"}]})
        as_system = request_text({"messages": [{"role": "system", "content": "hi"}]})
        assert as_user != as_system

    def test_openai_content_parts_are_their_text(self) -> None:
        parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]
        plain = request_text({"messages": [{"role": "user", "content": "look"}]})
        assert request_text({"messages": [{"role": "user", "content": parts}]}) == plain

    def test_raw_prompts_with_their_system_first(self) -> None:
        text = request_text({"prompt": "Once upon", "system": "Be brief"})
        assert text.index("Be brief") < text.index("Once upon")
        assert request_text({"prompt": ["first", "second"]}) == request_text({"prompt": "first"})

    def test_nothing_to_reuse(self) -> None:
        assert request_text({"input": "embed me"}) == ""
        assert request_text({"prompt": ""}) == ""

    def test_request_facts_carry_it_for_chat_and_generate_only(self) -> None:
        chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        assert "hi" in request_facts(ROUTED["/api/chat"], chat).text
        embed = b'{"model": "m", "prompt": "hi"}'
        assert request_facts(ROUTED["/api/embeddings"], embed).text == ""


class TestPrefixHashes:
    def test_a_longer_turn_shares_the_earlier_turns_leading_hashes(self) -> None:
        first, second = chat_prefix(1, 1), chat_prefix(1, 2)
        full_chunks = len(first) - 1  # the last chunk of the first turn is partial
        assert second[:full_chunks] == first[:full_chunks]
        assert len(second) > len(first)

    def test_another_model_shares_nothing(self) -> None:
        text = request_text({"messages": conversation(1, 2)})
        assert not set(prefix_hashes(MODEL, text)) & set(prefix_hashes("other:1b", text))

    def test_bounded_per_request(self) -> None:
        assert len(prefix_hashes(MODEL, "x" * 100_000, chunk_chars=64, max_chunks=10)) == 10
        assert prefix_hashes(MODEL, "") == ()


class TestPrefixIndex:
    def test_matched_counts_leading_chunks_sent_to_that_pod(self) -> None:
        index = PrefixIndex()
        index.record("a", chat_prefix(1, 1))
        second = chat_prefix(1, 2)
        assert index.matched("a", second) == len(chat_prefix(1, 1)) - 1
        assert index.matched("b", second) == 0

    def test_memory_is_bounded_per_pod_oldest_first(self) -> None:
        index = PrefixIndex(entries_per_pod=8)
        old, new = prefix_hashes(MODEL, "o" * 640), prefix_hashes(MODEL, "n" * 640)
        index.record("a", old)
        index.record("a", new)
        assert index.size("a") == 8
        # The newest request keeps its leading chunks (the tail goes first), the oldest none.
        assert len(new) == 10
        assert index.matched("a", new) == 8
        assert index.matched("a", old) == 0

    def test_pods_that_leave_are_forgotten(self) -> None:
        index = PrefixIndex()
        index.record("a", chat_prefix(1, 1))
        index.record("b", chat_prefix(2, 1))
        index.keep_only({"b", "c"})
        assert index.endpoints() == ("b",)
        assert index.matched("a", chat_prefix(1, 1)) == 0


class TestPickCacheAware:
    def test_the_conversation_sticks_to_its_pod(self) -> None:
        # Equal loads, and even one more request in flight on its pod: the reuse wins.
        for loads in ({"a": 0, "b": 0}, {"a": 1, "b": 1}, {"a": 2, "b": 1}):
            assert pick_cache_aware(["a", "b"], loads, {"a": 9, "b": 2}, 10) == "a"

    def test_a_second_turn_stays_beside_an_idle_pod(self) -> None:
        """Turn 2 of a conversation whose system prompt both pods hold (bench/routing.py's
        proportions: 15 of its 25 chunks are the system prompt, 18 its first turn): its pod
        has one request in flight and the other none, and the history is worth more."""
        conversation = chat_prefix(1, 2)
        index = PrefixIndex()
        index.record("a", chat_prefix(1, 1))
        index.record("b", chat_prefix(2, 1))  # another conversation: the system prompt only
        matched = {e: index.matched(e, conversation) for e in ("a", "b")}
        assert matched["b"] < matched["a"] < len(conversation)
        assert pick_cache_aware(["a", "b"], {"a": 1}, {"a": 18, "b": 15}, 25) == "a"
        assert pick_cache_aware(["a", "b"], {"a": 1}, matched, len(conversation)) == "a"

    def test_a_pod_one_request_above_an_even_split_keeps_its_conversations(self) -> None:
        # Two in flight on a, none on b: the third still fits one above the even split of 1.5.
        assert load_bound(2, 2) == 3
        assert pick_cache_aware(["a", "b"], {"a": 2}, {"a": 9, "b": 2}, 10) == "a"
        # Three on a: the fourth is two above the even split, so b takes it.
        assert load_bound(3, 2) == 3
        assert pick_cache_aware(["a", "b"], {"a": 3}, {"a": 9, "b": 2}, 10) == "b"

    def test_a_saturated_pod_spreads_its_hot_prefix(self) -> None:
        assert load_bound(4, 2) == 4
        assert pick_cache_aware(["a", "b"], {"a": 4, "b": 0}, {"a": 10, "b": 0}, 10) == "b"

    def test_new_conversations_go_to_the_least_busy_pod(self) -> None:
        assert pick_cache_aware(["a", "b"], {"a": 2, "b": 1}, {}, 5) == "b"
        picks = {pick_cache_aware(["a", "b", "c"], {}, {}, 5, turn=t) for t in range(3)}
        assert picks == {"a", "b", "c"}

    def test_a_shared_system_prompt_does_not_pull_every_conversation_to_one_pod(self) -> None:
        # Only pod a has seen the system prompt (half of each new conversation's text).
        loads: Counter[str] = Counter()
        for _ in range(8):
            pick = pick_cache_aware(["a", "b"], loads, {"a": 5}, 10)
            assert pick is not None
            loads[pick] += 1
        assert loads["b"] >= 3

    def test_excluded_pods_and_single_pods(self) -> None:
        assert pick_cache_aware(["a", "b"], {}, {"a": 9}, 10, exclude={"a"}) == "b"
        assert pick_cache_aware(["a"], {"a": 50}, {}, 10) == "a"
        assert pick_cache_aware(["a"], {}, {}, 10, exclude={"a"}) is None

    def test_concurrent_conversations_stick_and_balance(self) -> None:
        """Eight conversations at once over two pods, five turns each, every turn in flight
        while the others' are: each stays on the pod of its first turn, four per pod."""
        index, loads = PrefixIndex(), Counter[str]()
        home: dict[int, str] = {}
        for turns in range(1, 6):
            for topic in range(8):
                prefix = chat_prefix(topic, turns)
                matched = {e: index.matched(e, prefix) for e in ("a", "b")}
                pick = pick_cache_aware(["a", "b"], loads, matched, len(prefix), turn=topic)
                assert pick is not None
                index.record(pick, prefix)
                loads[pick] += 1
                assert home.setdefault(topic, pick) == pick, (topic, turns)
            loads.clear()  # the turn's answers come back before the next turn is sent
        assert Counter(home.values()) == {"a": 4, "b": 4}


class TestRoutingOutcome:
    def test_hit_where_the_chosen_pod_holds_the_longest_match(self) -> None:
        assert routing_outcome(["a", "b"], {"a": 5, "b": 2}, "a") == HIT
        assert routing_outcome(["a", "b"], {"a": 5, "b": 5}, "b") == HIT  # a shared prompt

    def test_spill_where_another_pod_held_more(self) -> None:
        assert routing_outcome(["a", "b"], {"a": 5, "b": 2}, "b") == SPILL
        assert routing_outcome(["a", "b"], {"a": 5}, "b") == SPILL

    def test_miss_where_no_pod_held_any(self) -> None:
        assert routing_outcome(["a", "b"], {}, "a") == MISS
        assert routing_outcome(["a", "b"], {"a": 0, "b": 0}, "b") == MISS

    def test_leaving_a_failed_pod_is_no_spill(self) -> None:
        assert routing_outcome(["a", "b"], {"a": 5, "b": 2}, "b", exclude={"a"}) == HIT
        assert routing_outcome(["a", "b"], {"a": 5}, "b", exclude={"a"}) == MISS


KEY: ServerKey = ("ns", "gemma")


def two_pods(routing: str = CACHE_AWARE, endpoints: tuple[str, ...] = ("a:1", "b:1")) -> Snapshot:
    view = ServerView(key=KEY, endpoints=endpoints, desired=len(endpoints), routing=routing)
    return Snapshot(servers={KEY: view})


def send(dispatcher: Dispatcher, topic: int, turns: int) -> str:
    """One turn through the dispatcher's choice; answered (released) at once."""
    prefix = dispatcher.prefix_of(
        KEY, MODEL, request_text({"messages": conversation(topic, turns)})
    )
    endpoint = dispatcher.try_pick(KEY, (), prefix)
    assert endpoint is not None
    dispatcher.lease(KEY, endpoint, prefix).release()
    return endpoint


class TestDispatcher:
    async def test_sequential_turns_stay_where_least_in_flight_alternates(self) -> None:
        async with aiohttp.ClientSession() as client:
            dispatcher = Dispatcher(
                GatewaySettings(), StaticBackend(GatewaySettings()), GatewayMetrics(), client
            )
            dispatcher.update(two_pods())
            assert len({send(dispatcher, 1, turns) for turns in range(1, 6)}) == 1
            dispatcher.update(two_pods(LEAST_IN_FLIGHT))
            assert len({send(dispatcher, 2, turns) for turns in range(1, 6)}) == 2

    async def test_both_strategies_count_what_their_choices_did_with_the_prefix(self) -> None:
        """The first turn matches nowhere; CacheAware's later turns find their pod, while
        LeastInFlight's alternate away from the pod that holds the longer prefix."""
        metrics = GatewayMetrics()
        async with aiohttp.ClientSession() as client:
            for routing in (CACHE_AWARE, LEAST_IN_FLIGHT):
                dispatcher = Dispatcher(
                    GatewaySettings(), StaticBackend(GatewaySettings()), metrics, client
                )
                dispatcher.update(two_pods(routing))
                for turns in range(1, 6):
                    send(dispatcher, 1, turns)
            decisions = metrics.registry.get_sample_value
            labels = {"namespace": "ns", "server": "gemma"}
            name = "corral_gateway_routing_decisions_total"
            assert decisions(name, {**labels, "strategy": CACHE_AWARE, "outcome": MISS}) == 1
            assert decisions(name, {**labels, "strategy": CACHE_AWARE, "outcome": HIT}) == 4
            assert decisions(name, {**labels, "strategy": LEAST_IN_FLIGHT, "outcome": MISS}) == 1
            assert decisions(name, {**labels, "strategy": LEAST_IN_FLIGHT, "outcome": SPILL}) == 4
            share = "corral_gateway_prefix_match_ratio_sum"
            kept = decisions(share, {**labels, "strategy": CACHE_AWARE}) or 0.0
            scattered = decisions(share, {**labels, "strategy": LEAST_IN_FLIGHT}) or 0.0
            assert kept > 1.5 * scattered > 0

    async def test_pods_and_servers_that_leave_are_forgotten(self) -> None:
        async with aiohttp.ClientSession() as client:
            dispatcher = Dispatcher(
                GatewaySettings(), StaticBackend(GatewaySettings()), GatewayMetrics(), client
            )
            dispatcher.update(two_pods())
            home = send(dispatcher, 1, 1)
            other = ({"a:1", "b:1"} - {home}).pop()
            dispatcher.update(two_pods(endpoints=(other, "c:1")))
            index = dispatcher._prefixes[KEY]
            assert index.endpoints() == ()
            assert send(dispatcher, 1, 2) in {other, "c:1"}
            dispatcher.update(Snapshot())
            assert KEY not in dispatcher._prefixes


class TestStrategyFromTheSpec:
    def server(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": "gemma"}, "spec": spec}

    def test_cache_aware_unless_told_least_in_flight(self) -> None:
        assert server_view(self.server({}), None).routing == CACHE_AWARE
        assert server_view(self.server({"routing": {}}), None).routing == CACHE_AWARE
        told = self.server({"routing": {"strategy": LEAST_IN_FLIGHT}})
        assert server_view(told, None).routing == LEAST_IN_FLIGHT

    def test_static_servers_say_it_beside_their_endpoints(self) -> None:
        settings = GatewaySettings.model_validate(
            {"static_servers": {"local": {"models": [MODEL], "endpoints": ["a:1"]}}}
        )
        assert StaticBackend(settings)._snapshot.servers[("", "local")].routing == CACHE_AWARE
        settings = GatewaySettings.model_validate(
            {
                "static_servers": {
                    "local": {"models": [MODEL], "endpoints": ["a:1"], "routing": "LeastInFlight"}
                }
            }
        )
        view = StaticBackend(settings)._snapshot.servers[("", "local")]
        assert view.routing == LEAST_IN_FLIGHT

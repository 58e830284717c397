"""The gateway's cache-aware choice of a pod, in front of two real runtime replicas serving the
test model: every turn of a conversation reaches the replica that answered its first turn (and
so finds its history in that replica's KV cache), a new conversation goes to the idle replica
while the other is busy, and LeastInFlight scatters the same conversation. Where each request
went is read from each runtime's own ``/metrics`` (``corral_requests_total``), and what the
gateway made of it from the gateway's (``corral_gateway_routing_decisions_total``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral_operator.gateway.settings import GatewaySettings
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.runtime.test_gateway_proxy import MODEL, run_gateway

pytestmark = pytest.mark.runtime

OPTIONS: dict[str, Any] = {"temperature": 0, "num_predict": 4, "seed": 7}


@pytest.fixture(scope="module")
def replicas(runtime_server: RunningServer, model_store: ModelStore) -> Iterator[list[str]]:
    """Two replicas of one server: the session's runtime and a second one over the same
    store."""
    with serve(settings_for(model_store.root), model_store) as second:
        yield [runtime_server.base_url, second.base_url]


def routing_decisions(client: httpx.Client, routing: str) -> dict[str, int]:
    """The gateway's count of its choices of a pod for ``routing``, by outcome."""
    text = client.get("/metrics", timeout=10).text
    return {
        s.labels["outcome"]: int(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "corral_gateway_routing_decisions_total"
        and s.labels.get("strategy") == routing
    }


def chats_answered(base_url: str) -> float:
    """The runtime's count of answered ``/api/chat`` requests."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "corral_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "corral_requests_total" and s.labels.get("endpoint") == "/api/chat"
            )
    return 0.0


class Counts:
    """Chats each replica answered since the last ``taken``."""

    def __init__(self, replicas: list[str]) -> None:
        self.replicas = replicas
        self.before = [chats_answered(r) for r in replicas]

    def taken(self) -> list[int]:
        now = [chats_answered(r) for r in self.replicas]
        delta = [int(n - b) for n, b in zip(now, self.before, strict=True)]
        self.before = now
        return delta


@contextmanager
def routed(replicas: list[str], routing: str) -> Iterator[tuple[httpx.Client, Counts]]:
    """A client of a gateway in front of both replicas with the ``routing`` strategy, and the
    chats each replica answers from now on."""
    endpoints = [url.removeprefix("http://") for url in replicas]
    server = {"models": [MODEL], "endpoints": endpoints, "routing": routing}
    settings = GatewaySettings.model_validate({"static_servers": {"two": server}})
    with run_gateway(settings) as url, httpx.Client(base_url=url) as client:
        yield client, Counts(replicas)


def say(client: httpx.Client, messages: list[dict[str, str]], content: str) -> None:
    """One turn: the user's ``content`` and the answer appended to ``messages``."""
    messages.append({"role": "user", "content": content})
    body = {"model": MODEL, "messages": messages, "stream": False, "options": OPTIONS}
    answer = client.post("/api/chat", json=body, timeout=120)
    answer.raise_for_status()
    messages.append(answer.json()["message"])


def conversation(system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}]


QUESTIONS = [
    f"Question {n}: tell me about the weather in the mountains in some detail, please." * 2
    for n in range(4)
]


@pytest.mark.parametrize(
    ("routing", "spread", "outcomes"),
    [
        ("CacheAware", [0, len(QUESTIONS)], {"miss": 1, "hit": 3}),
        ("LeastInFlight", [2, 2], {"miss": 1, "spill": 3}),
    ],
    ids=["cache-aware-keeps-it-on-one-replica", "least-in-flight-scatters-it"],
)
def test_the_turns_of_a_conversation(
    replicas: list[str], routing: str, spread: list[int], outcomes: dict[str, int]
) -> None:
    """CacheAware: every turn reaches the replica that answered the first; LeastInFlight
    alternates between the idle replicas. The gateway's metrics say so: the first turn matched
    nowhere, and each later one found (hit) or left (spill) the replica holding its history."""
    with routed(replicas, routing) as (client, counts):
        messages = conversation("You are a guide to the Alps. " * 8)
        for question in QUESTIONS:
            say(client, messages, question)
        assert sorted(counts.taken()) == spread
        assert routing_decisions(client, routing) == outcomes


def test_a_new_conversation_takes_the_idle_replica_while_the_other_is_busy(
    replicas: list[str],
) -> None:
    with routed(replicas, "CacheAware") as (client, counts):
        first = conversation("You are a guide to the Alps. " * 8)
        say(client, first, QUESTIONS[0])
        home = counts.taken().index(1)
        first.append({"role": "user", "content": QUESTIONS[1]})
        long_turn = {
            "model": MODEL,
            "messages": first,
            "stream": True,
            "options": {**OPTIONS, "num_predict": 48},
        }
        with client.stream("POST", "/api/chat", json=long_turn, timeout=120) as busy:
            lines = (json.loads(line) for line in busy.iter_lines() if line.strip())
            reply = [next(lines)["message"]["content"]]  # in flight on its replica now
            second = conversation("You are a sommelier who knows every wine of Burgundy. " * 4)
            say(client, second, QUESTIONS[0])
            reply.extend(chunk["message"]["content"] for chunk in lines)
        first.append({"role": "assistant", "content": "".join(reply)})
        taken = counts.taken()
        assert taken[home] == 1 and taken[1 - home] == 1
        # Each conversation then stays where it began.
        say(client, second, QUESTIONS[1])
        say(client, first, QUESTIONS[2])
        say(client, second, QUESTIONS[2])
        taken = counts.taken()
        assert taken[home] == 1 and taken[1 - home] == 2

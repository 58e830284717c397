"""Routing benchmark: the gateway's cache-aware choice of a pod against least-in-flight, for
multi-turn conversations over two replicas.

Not on the local cluster: four runtime pods and the cluster's own processes do not fit the two
cores this is run on beside everything else. Instead ``corral serve`` processes (the bundled
test model unless --model is given; --parallel slots and --threads each) stand for the pods, two
per strategy, and a gateway process (``python -m corral_operator.gateway`` with static servers,
the gateway's mode without Kubernetes) stands in front of each pair: one with ``routing:
CacheAware``, one with ``routing: LeastInFlight``. The gateway's choice of a pod is the same code
as in the cluster; only the routing table comes from the settings instead of the Endpoints.

Each phase runs --conversations concurrent conversations of --turns turns through one gateway:
every conversation has the same long system prompt (a shared prefix) and its own growing
history, each turn streams ``/api/chat`` (temperature 0, --max-tokens) and appends the answer,
after a pause of up to --think-seconds (a user reading and typing).
Each strategy has a pair of replicas of its own, and their phases take turns, --repeats times
each, in ABBA order, a few seconds apart (the replicas finish warming the last turns): a
strategy's replicas then have the cores to themselves, as on nodes of their own, so the prompts
one strategy evaluates again do not slow the other's. --side-by-side runs both phases of a
repeat at the same time instead (whatever else loads the machine loads both alike, but so does
each side's own work). Every phase's system prompt starts with a tag of its own, so no phase
finds an earlier phase's prefixes in the KV caches.
Time to first token is measured per turn (with the runtime's prompt evaluation time, what a
prefix found in the cache saves), tokens per second are the answers' tokens over the phase's
wall time, and each phase says how many turns each of its replicas answered, how long its last
prompts were, and what its gateway's metrics made of the routing: the mean share of a request's
text its pod had been sent before (``corral_gateway_prefix_match_ratio``) and its choices by
outcome (``corral_gateway_routing_decisions_total``: hit, spill, miss).

Last lines: ``ttft_p50_ratio_cache_aware_vs_least_in_flight=<x>`` (turns 2 and later, goal
≤ 0.6) and ``aggregate_tokens_per_s_ratio=<x>`` (cache-aware over least-in-flight, goal ≥ 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

STRATEGIES = ("LeastInFlight", "CacheAware")
MODEL = "bench:latest"
SYSTEM = (
    "You are a patient travel guide for the Alps. You answer in plain sentences, name the "
    "valleys, passes and huts a walker meets, warn about the weather above the tree line, and "
    "never recommend a route you would not walk with a child. Keep every answer short. "
) * 3


@dataclass
class Phase:
    strategy: str
    ttft_first: list[float] = field(default_factory=list)
    """Seconds to the first token of each conversation's first turn."""
    ttft_later: list[float] = field(default_factory=list)
    """The same for turns 2 and later."""
    prefill_later: list[float] = field(default_factory=list)
    """The runtime's ``prompt_eval_duration`` of turns 2 and later (seconds): what a prefix
    found in the replica's KV cache saves."""
    last_prompt_tokens: list[int] = field(default_factory=list)
    """The prompt of each conversation's last turn (tokens): how far the histories grew."""
    tokens: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def question(conversation: int, turn: int) -> str:
    return (
        f"Walker {conversation} asks, on day {turn + 1}: which way from the hut of valley "
        f"{conversation * 7 + turn} leads over the next pass, how long does it take, and what "
        "should I carry if the clouds come down in the afternoon?"
    )


async def chat_turn(
    http: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, dict[str, Any], str]:
    """One streamed turn: its time to first token, its last chunk (the runtime's counts and
    durations) and its answer's text."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "options": {"temperature": 0, "num_predict": max_tokens, "seed": 1},
    }
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    done: dict[str, Any] = {}
    async with http.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            content = (chunk.get("message") or {}).get("content") or ""
            if content and first is None:
                first = time.perf_counter()
            parts.append(content)
            if chunk.get("done"):
                done = chunk
    if first is None:
        raise RuntimeError("a turn produced no text")
    return first - started, done, "".join(parts)


async def run_phase(
    base: str,
    strategy: str,
    tag: str,
    conversations: int,
    turns: int,
    max_tokens: int,
    think_seconds: float = 0.0,
) -> Phase:
    phase = Phase(strategy)
    limits = httpx.Limits(max_connections=conversations + 4)
    async with httpx.AsyncClient(base_url=base, timeout=900, limits=limits) as http:

        async def converse(index: int) -> None:
            # The same pauses on both sides: seeded by the conversation, not the phase.
            pauses = random.Random(index)
            messages = [{"role": "system", "content": f"[{tag}] {SYSTEM}"}]
            for turn in range(turns):
                await asyncio.sleep(pauses.uniform(0, think_seconds))
                messages.append({"role": "user", "content": question(index, turn)})
                ttft, done, text = await chat_turn(http, messages, max_tokens)
                messages.append({"role": "assistant", "content": text})
                (phase.ttft_first if turn == 0 else phase.ttft_later).append(ttft)
                if turn > 0:
                    phase.prefill_later.append(done.get("prompt_eval_duration", 0) / 1e9)
                if turn == turns - 1:
                    phase.last_prompt_tokens.append(int(done.get("prompt_eval_count") or 0))
                phase.tokens += int(done.get("eval_count") or 0)

        started = time.perf_counter()
        await asyncio.gather(*(converse(i) for i in range(conversations)))
        phase.seconds = time.perf_counter() - started
    return phase


def chats_answered(base_url: str) -> float:
    """A replica's count of answered ``/api/chat`` requests (its ``corral_requests_total``)."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "corral_requests_total" and sample.labels.get("endpoint") == "/api/chat"
    )


def routing_counts(gateway_url: str) -> dict[str, float]:
    """A gateway's routing metrics, summed over its servers: choices by outcome, and the sum
    and count of the prefix shares its chosen pods held."""
    text = httpx.get(gateway_url + "/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "corral_gateway_routing_decisions_total":
                name = sample.labels["outcome"]
            elif sample.name in (
                "corral_gateway_prefix_match_ratio_sum",
                "corral_gateway_prefix_match_ratio_count",
            ):
                name = sample.name.rsplit("_", 1)[1]
            else:
                continue
            counts[name] = counts.get(name, 0.0) + sample.value
    return counts


def describe_routing(before: dict[str, float], after: dict[str, float]) -> str:
    """What a phase's gateway made of its routing, from its metrics before and after."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    share = delta.get("sum", 0.0) / max(1.0, delta.get("count", 0.0))
    outcomes = " ".join(f"{k}={int(delta.get(k, 0))}" for k in ("hit", "spill", "miss"))
    return f"prefix_share_mean={share:.2f} {outcomes}"


def describe(phase: Phase) -> str:
    return (
        f"{phase.strategy}: ttft_p50_turn1_ms={statistics.median(phase.ttft_first) * 1000:.0f} "
        f"ttft_p50_later_ms={statistics.median(phase.ttft_later) * 1000:.0f} "
        f"prefill_p50_later_ms={statistics.median(phase.prefill_later) * 1000:.0f} "
        f"tokens_per_s={phase.rate:.1f} ({phase.tokens} tokens in {phase.seconds:.1f}s) "
        f"last_prompt_tokens_mean={statistics.mean(phase.last_prompt_tokens):.0f}"
    )


def phase_order(repeat: int) -> tuple[str, ...]:
    """The strategies' phases of one repeat run in turn, ABBA: each goes first as often."""
    return STRATEGIES if repeat % 2 == 0 else STRATEGIES[::-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="tokens per answer (the test model fills them): a short chat answer, so the "
        "histories grow to several hundred tokens over the turns",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="slots per replica (default: room for half the conversations, as a server sized "
        "for its load would have: a replica that sees every conversation evicts some)",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per replica")
    parser.add_argument(
        "--context-length", type=int, default=8192, help="per replica, shared by its slots"
    )
    parser.add_argument("--repeats", type=int, default=2, help="phases per strategy")
    parser.add_argument(
        "--think-seconds",
        type=float,
        default=10.0,
        help="most a user pauses before each turn (uniform from 0, the same on both sides): "
        "with short pauses every turn is sent soon after the last one ends, while the replica "
        "that answered it has one request fewer in flight than the other, and least-in-flight "
        "keeps conversations in place by accident (at 3 s, 38 of 47 later turns stayed)",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="run both strategies' phases of a repeat at the same time, not in turn",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=5.0,
        help="pause after each phase run in turn, while its replicas warm its last turns",
    )
    args = parser.parse_args()

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path
    from tests.support.serveproc import gateway_process, serving_process

    model_path = args.model or test_model_path()
    phases: dict[str, list[Phase]] = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store = Path(tmp) / "models"
        ModelStore(store).create_model(MODEL, model_path, params={})
        serve_args = (
            f"--parallel={args.parallel}",
            f"--threads={args.threads}",
            f"--context-length={args.context_length}",
            "--keep-alive=-1",
        )
        # Two replicas per strategy, both pairs measured at once: whatever else loads the
        # machine meanwhile loads both sides alike.
        replicas = {
            strategy: [
                stack.enter_context(
                    serving_process(store, *serve_args, log=Path(tmp) / f"{strategy}-{i}.log")
                ).base_url
                for i in range(2)
            ]
            for strategy in STRATEGIES
        }
        gateways: dict[str, str] = {}
        for strategy, pair in replicas.items():
            endpoints = [url.removeprefix("http://") for url in pair]
            servers = {"two": {"models": [MODEL], "endpoints": endpoints, "routing": strategy}}
            env = {"CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(servers)}
            log = Path(tmp) / f"gateway-{strategy}.log"
            gateways[strategy] = stack.enter_context(gateway_process(env, log=log)).base_url
        for url in (url for pair in replicas.values() for url in pair):
            # Load the model in each and touch its weights.
            asyncio.run(run_phase(url, "warm-up", "warm", 1, 1, 4))

        def phase_of(repeat: int, strategy: str) -> Any:
            return run_phase(
                gateways[strategy],
                strategy,
                f"phase {repeat}-{strategy}",
                args.conversations,
                args.turns,
                args.max_tokens,
                args.think_seconds,
            )

        async def side_by_side(repeat: int) -> list[Phase]:
            return list(await asyncio.gather(*(phase_of(repeat, s) for s in STRATEGIES)))

        def in_turn(repeat: int) -> list[Phase]:
            done = []
            for strategy in phase_order(repeat):
                done.append(asyncio.run(phase_of(repeat, strategy)))
                time.sleep(args.settle_seconds)
            return done

        for repeat in range(args.repeats):
            before = {s: [chats_answered(url) for url in replicas[s]] for s in STRATEGIES}
            routing_before = {s: routing_counts(gateways[s]) for s in STRATEGIES}
            measured = asyncio.run(side_by_side(repeat)) if args.side_by_side else in_turn(repeat)
            for phase in measured:
                phases[phase.strategy].append(phase)
                split = [
                    int(chats_answered(url) - was)
                    for url, was in zip(
                        replicas[phase.strategy], before[phase.strategy], strict=True
                    )
                ]
                routing = describe_routing(
                    routing_before[phase.strategy], routing_counts(gateways[phase.strategy])
                )
                print(
                    f"run {repeat + 1}: {describe(phase)} turns_per_replica={split} {routing}",
                    flush=True,
                )
    later = {s: [t for p in phases[s] for t in p.ttft_later] for s in STRATEGIES}
    rate = {
        s: sum(p.tokens for p in phases[s]) / sum(p.seconds for p in phases[s]) for s in STRATEGIES
    }
    print(
        f"model={model_path.name} conversations={args.conversations} turns={args.turns} "
        f"max_tokens={args.max_tokens} parallel={args.parallel} threads={args.threads} "
        f"repeats={args.repeats} think_seconds={args.think_seconds} "
        f"{'side_by_side' if args.side_by_side else 'in_turn'}"
    )
    for strategy in STRATEGIES:
        print(
            f"{strategy}: ttft_p50_turns_2_on_ms={statistics.median(later[strategy]) * 1000:.0f} "
            f"aggregate_tokens_per_s={rate[strategy]:.1f}"
        )
    ratio = statistics.median(later["CacheAware"]) / statistics.median(later["LeastInFlight"])
    print(f"ttft_p50_ratio_cache_aware_vs_least_in_flight={ratio:.3f}")
    print(f"aggregate_tokens_per_s_ratio={rate['CacheAware'] / rate['LeastInFlight']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Routing benchmark: the gateway's cache-aware choice of a pod against least-in-flight, for
multi-turn conversations over two replicas.

Not on the local cluster: two replicas of a runtime pod and the cluster's own processes do not
fit the two cores this is run on beside everything else. Instead two ``corral serve`` processes
(the bundled test model unless --model is given; --parallel slots and --threads each) stand for
the two pods of one ModelServer, and two gateway processes (``python -m corral_operator.gateway``
with static servers, the gateway's mode without Kubernetes) stand in front of both: one with
``routing: CacheAware``, one with ``routing: LeastInFlight``. The gateway's choice of a pod is
the same code either way; only the routing table comes from the settings instead of the
cluster's Endpoints.

Each phase runs --conversations concurrent conversations of --turns turns through one gateway:
every conversation has the same long system prompt (a shared prefix) and its own growing
history, each turn streams ``/api/chat`` (temperature 0, --max-tokens) and appends the answer.
The phases alternate between the two gateways --repeats times each; every phase's system prompt
starts with a tag of its own, so no phase finds another phase's prefixes in the replicas' KV
caches. Time to first token is measured per turn; tokens per second are the answers' tokens
over the phase's wall time.

Last lines: ``ttft_p50_ratio_cache_aware_vs_least_in_flight=<x>`` (turns 2 and later, goal
≤ 0.6) and ``aggregate_tokens_per_s_ratio=<x>`` (cache-aware over least-in-flight, goal ≥ 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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
) -> tuple[float, int, str]:
    """One streamed turn: its time to first token, its answer's tokens and text."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "options": {"temperature": 0, "num_predict": max_tokens, "seed": 1},
    }
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
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
                tokens = int(chunk.get("eval_count") or 0)
    if first is None:
        raise RuntimeError("a turn produced no text")
    return first - started, tokens, "".join(parts)


async def run_phase(
    base: str, strategy: str, tag: str, conversations: int, turns: int, max_tokens: int
) -> Phase:
    phase = Phase(strategy)
    limits = httpx.Limits(max_connections=conversations + 4)
    async with httpx.AsyncClient(base_url=base, timeout=900, limits=limits) as http:

        async def converse(index: int) -> None:
            messages = [{"role": "system", "content": f"[{tag}] {SYSTEM}"}]
            for turn in range(turns):
                messages.append({"role": "user", "content": question(index, turn)})
                ttft, tokens, text = await chat_turn(http, messages, max_tokens)
                messages.append({"role": "assistant", "content": text})
                (phase.ttft_first if turn == 0 else phase.ttft_later).append(ttft)
                phase.tokens += tokens

        started = time.perf_counter()
        await asyncio.gather(*(converse(i) for i in range(conversations)))
        phase.seconds = time.perf_counter() - started
    return phase


def describe(phase: Phase) -> str:
    return (
        f"{phase.strategy}: ttft_p50_turn1_ms={statistics.median(phase.ttft_first) * 1000:.0f} "
        f"ttft_p50_later_ms={statistics.median(phase.ttft_later) * 1000:.0f} "
        f"tokens_per_s={phase.rate:.1f} ({phase.tokens} tokens in {phase.seconds:.1f}s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=4, help="slots per replica")
    parser.add_argument("--threads", type=int, default=1, help="threads per replica")
    parser.add_argument("--context-length", type=int, default=8192, help="per replica")
    parser.add_argument("--repeats", type=int, default=2, help="phases per strategy")
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
        replicas = [
            stack.enter_context(
                serving_process(store, *serve_args, log=Path(tmp) / f"replica-{i}.log")
            )
            for i in range(2)
        ]
        endpoints = [r.base_url.removeprefix("http://") for r in replicas]
        gateways: dict[str, str] = {}
        for strategy in STRATEGIES:
            servers = {"two": {"models": [MODEL], "endpoints": endpoints, "routing": strategy}}
            env = {"CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(servers)}
            log = Path(tmp) / f"gateway-{strategy}.log"
            gateways[strategy] = stack.enter_context(gateway_process(env, log=log)).base_url
        for replica in replicas:  # load the model in each and touch its weights
            asyncio.run(run_phase(replica.base_url, "warm-up", "warm", 1, 1, 4))
        for repeat in range(args.repeats):
            # Alternate which goes first, so a machine's changing load falls on both alike.
            order = STRATEGIES if repeat % 2 == 0 else STRATEGIES[::-1]
            for strategy in order:
                phase = asyncio.run(
                    run_phase(
                        gateways[strategy],
                        strategy,
                        f"phase {repeat}-{strategy}",
                        args.conversations,
                        args.turns,
                        args.max_tokens,
                    )
                )
                phases[strategy].append(phase)
                print(f"run {repeat + 1}: {describe(phase)}", flush=True)
    later = {s: [t for p in phases[s] for t in p.ttft_later] for s in STRATEGIES}
    rate = {
        s: sum(p.tokens for p in phases[s]) / sum(p.seconds for p in phases[s]) for s in STRATEGIES
    }
    print(
        f"model={model_path.name} conversations={args.conversations} turns={args.turns} "
        f"max_tokens={args.max_tokens} parallel={args.parallel} threads={args.threads} "
        f"repeats={args.repeats}"
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

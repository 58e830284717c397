"""Routing benchmark: the gateway's cache-aware choice of a pod against least-in-flight, for
multi-turn conversations over two replicas.

With --cluster the replicas are pods on the local cluster (``devstack``: the control plane, the
real node with kubelet, containerd and kube-proxy, the chart with the images built from this
tree; a stack of its own, about five minutes to come up): a Model per strategy (the local sample's
GGUF under two names, one blob in the cache) and a ModelServer of two replicas for each, one
with ``routing: CacheAware``, one with ``routing: LeastInFlight``, both behind the cluster's one
gateway. Each pod has --parallel slots and --threads threads, a CPU request of 250m and no CPU
limit (four pods fit the two-core node).

Without it, ``corral serve`` processes (the bundled test model unless --model is given) stand
for the pods, two per strategy, and a gateway process (``python -m corral_operator.gateway``
with static servers, the gateway's mode without Kubernetes) stands in front of each pair. The
gateway's choice of a pod is the same code either way; only the routing table comes from the
settings instead of the Endpoints.

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
from functools import partial
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
    eval_seconds: float = 0.0
    """The runtime's ``eval_duration`` of all turns (seconds): their decoding after the first
    token."""
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
    http: httpx.AsyncClient, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, dict[str, Any], str]:
    """One streamed turn: its time to first token, its last chunk (the runtime's counts and
    durations) and its answer's text."""
    body: dict[str, Any] = {
        "model": model,
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
    model: str,
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
                ttft, done, text = await chat_turn(http, model, messages, max_tokens)
                messages.append({"role": "assistant", "content": text})
                (phase.ttft_first if turn == 0 else phase.ttft_later).append(ttft)
                if turn > 0:
                    phase.prefill_later.append(done.get("prompt_eval_duration", 0) / 1e9)
                if turn == turns - 1:
                    phase.last_prompt_tokens.append(int(done.get("prompt_eval_count") or 0))
                phase.tokens += int(done.get("eval_count") or 0)
                phase.eval_seconds += (done.get("eval_duration") or 0) / 1e9

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


def routing_counts(gateway_url: str, strategy: str) -> dict[str, float]:
    """A gateway's routing metrics for its servers of one strategy: choices by outcome, and
    the sum and count of the prefix shares its chosen pods held."""
    text = httpx.get(gateway_url + "/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("strategy") != strategy:
                continue
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


@dataclass(frozen=True, slots=True)
class Side:
    """Where one strategy's phases go: its gateway, the model name its server answers to, and
    its replicas' base URLs (whose ``/metrics`` count the turns each answered)."""

    gateway: str
    model: str
    replicas: tuple[str, ...]


def local_sides(stack: ExitStack, args: argparse.Namespace, tmp: Path) -> dict[str, Side]:
    """Two ``corral serve`` processes per strategy behind a gateway process of its own."""
    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path
    from tests.support.serveproc import gateway_process, serving_process

    store = tmp / "models"
    ModelStore(store).create_model(MODEL, args.model or test_model_path(), params={})
    serve_args = (
        f"--parallel={args.parallel}",
        f"--threads={args.threads}",
        f"--context-length={args.context_length}",
        "--keep-alive=-1",
    )
    sides = {}
    for strategy in STRATEGIES:
        pair = tuple(
            stack.enter_context(
                serving_process(store, *serve_args, log=tmp / f"{strategy}-{i}.log")
            ).base_url
            for i in range(2)
        )
        endpoints = [url.removeprefix("http://") for url in pair]
        servers = {"two": {"models": [MODEL], "endpoints": endpoints, "routing": strategy}}
        env = {"CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(servers)}
        log = tmp / f"gateway-{strategy}.log"
        gateway = stack.enter_context(gateway_process(env, log=log)).base_url
        sides[strategy] = Side(gateway, MODEL, pair)
    for url in (url for side in sides.values() for url in side.replicas):
        # Load the model in each and touch its weights.
        asyncio.run(run_phase(url, MODEL, "warm-up", "warm", 1, 1, 4))
    return sides


def cluster_objects(
    sample_model: dict[str, Any], strategy: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """A Model (the sample's, under a name of its own: the same blob in the cache) and a
    ModelServer of two replicas routing with ``strategy``, sized as the local replicas."""
    name = cluster_name(strategy)
    model = {**sample_model, "metadata": {"name": name}}
    server = {
        "apiVersion": sample_model["apiVersion"],
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {
            "models": [name],
            "minReplicas": 2,
            "maxReplicas": 2,
            "routing": {"strategy": strategy},
            # Requests small enough for four pods on a two-core node; no CPU limit.
            "resources": {"gpus": 0, "cpu": "250m", "memory": "2Gi"},
            "runtime": {
                "contextLength": args.context_length,
                "parallel": args.parallel,
                "gpuLayers": 0,
                "env": [{"name": "CORRAL_THREADS", "value": str(args.threads)}],
            },
        },
    }
    return [model, server]


def cluster_name(strategy: str) -> str:
    return f"routing-{strategy.lower()}"


def ready_pod_urls(core: Any, server: str) -> tuple[str, ...] | None:
    """The base URLs of a server's runtime pods once two are Ready, else None."""
    from corral_operator import api
    from corral_operator.builders.runtime import selector_labels

    selector = ",".join(f"{k}={v}" for k, v in selector_labels(server).items())
    pods = core.list_namespaced_pod(CLUSTER_NAMESPACE, label_selector=selector).items
    ready = [
        pod
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        and pod.status.pod_ip
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())
    ]
    if len(ready) < 2:
        return None
    return tuple(f"http://{pod.status.pod_ip}:{api.RUNTIME_PORT}" for pod in ready)


CLUSTER_NAMESPACE = "default"


def cluster_sides(stack: ExitStack, args: argparse.Namespace, tmp: Path) -> dict[str, Side]:
    """A ModelServer of two replicas per strategy on the local cluster (``devstack``: the
    control plane, the real node with containerd, the chart with the images built from this
    tree), behind the cluster's one gateway."""
    import yaml
    from kubernetes import client, config

    from devstack.poll import wait_for
    from devstack.stack import free_node_port, running

    port = free_node_port()
    cluster = stack.enter_context(running(tmp / "stack", gateway_port=port))
    docs = cluster.apply_sample(CLUSTER_NAMESPACE)
    sample_model = next(d for d in docs if d["kind"] == "Model")
    objects = [o for s in STRATEGIES for o in cluster_objects(sample_model, s, args)]
    cluster.kubectl("apply", "-n", CLUSTER_NAMESPACE, "-f", "-", input=yaml.safe_dump_all(objects))
    core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    sides = {}
    for strategy in STRATEGIES:
        name = cluster_name(strategy)
        cluster.wait_ready("model", name, CLUSTER_NAMESPACE, timeout=600)
        pods = wait_for(f"{name}'s pods", partial(ready_pod_urls, core, name), timeout=600)
        sides[strategy] = Side(f"http://127.0.0.1:{port}", name, pods)
    for side in sides.values():
        # Through the gateway: the first requests to each pod, and its weights touched.
        asyncio.run(run_phase(side.gateway, side.model, "warm-up", "warm", 4, 1, 4))
    return sides


def replica_counts(side: Side) -> list[float]:
    try:
        return [chats_answered(url) for url in side.replicas]
    except httpx.HTTPError:
        return []  # pods the bench cannot reach: the split is not shown


def phase_order(repeat: int) -> tuple[str, ...]:
    """The strategies' phases of one repeat run in turn, ABBA: each goes first as often."""
    return STRATEGIES if repeat % 2 == 0 else STRATEGIES[::-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="GGUF file (default: the bundled test model; not --cluster)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the replicas are pods of two ModelServers on the local cluster (devstack, with "
        "its real node; root and `make node-deps`, and no other stack running), behind its "
        "gateway, instead of local processes",
    )
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

    phases: dict[str, list[Phase]] = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        make_sides = cluster_sides if args.cluster else local_sides
        sides = make_sides(stack, args, Path(tmp))

        def phase_of(repeat: int, strategy: str) -> Any:
            side = sides[strategy]
            return run_phase(
                side.gateway,
                side.model,
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
            before = {s: replica_counts(sides[s]) for s in STRATEGIES}
            routing_before = {s: routing_counts(sides[s].gateway, s) for s in STRATEGIES}
            measured = asyncio.run(side_by_side(repeat)) if args.side_by_side else in_turn(repeat)
            for phase in measured:
                phases[phase.strategy].append(phase)
                side = sides[phase.strategy]
                split = [
                    int(now - was)
                    for now, was in zip(replica_counts(side), before[phase.strategy], strict=False)
                ]
                routing = describe_routing(
                    routing_before[phase.strategy], routing_counts(side.gateway, phase.strategy)
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
        f"model={args.model.name if args.model else 'bundled'} conversations={args.conversations} "
        f"turns={args.turns} max_tokens={args.max_tokens} parallel={args.parallel} "
        f"threads={args.threads} repeats={args.repeats} think_seconds={args.think_seconds} "
        f"{'side_by_side' if args.side_by_side else 'in_turn'} "
        f"{'cluster' if args.cluster else 'local'}"
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

"""Request priorities against one runtime: what a saturating batch load does to an interactive
user's time to first token, first-come-first-served and with priority classes, in one run.

One ``corral serve`` (the bundled test model unless --model is given) with --parallel slots is
measured in three phases:

- idle: interactive requests one at a time, nothing else running (the reference TTFT);
- fifo: --batch-clients clients each stream --batch-requests generations of --batch-tokens
  tokens, more than the slots hold, while one interactive user sends a request, reads the
  answer, and pauses --interactive-every seconds before the next; no request names a class, so
  all share one queue in arrival order (the server as it was before priorities);
- priorities: the same load, the batch clients sending ``X-Corral-Priority: batch``.

The interactive requests send no header (interactive is the default class). Every prompt differs
from its first words on, so no slot's cached prefix helps anyone. --reserved sets the server's
CORRAL_PRIORITY_RESERVED_SLOTS (slots only interactive requests may take; default 1), and
--batch-share its CORRAL_PRIORITY_SHARES for batch (unset by default).

Printed last: ``interactive_ttft_p50_loaded_vs_idle_ratio=<x>`` with priorities (goal <= 1.5),
``interactive_ttft_p50_loaded_vs_idle_ratio_fifo=<x>``, and ``batch_throughput_kept=<x>``
(batch tokens per second with priorities over FIFO's; goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

from tests.support.serveproc import serving_process  # noqa: E402

MODEL = "bench"
SUBJECTS = (
    "sailing ships",
    "volcanoes",
    "honeybees",
    "castles",
    "coral reefs",
    "jazz",
    "glaciers",
    "foxes",
    "lighthouses",
    "bread",
    "comets",
    "goats",
)


def prompt(kind: str, i: int) -> str:
    """A prompt that differs from its first token on from every other of the run."""
    return f"{i} {kind}: a few words about {SUBJECTS[i % len(SUBJECTS)]} and"


@dataclass(slots=True)
class Phase:
    name: str
    ttfts: list[float] = field(default_factory=list)  # interactive requests'
    batch_tokens: int = 0
    batch_seconds: float = 0.0

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttfts)

    @property
    def batch_rate(self) -> float:
        return self.batch_tokens / self.batch_seconds if self.batch_seconds else 0.0


async def generate(
    http: httpx.AsyncClient, text: str, tokens: int, priority: str | None
) -> tuple[int, float]:
    """Stream one raw generation; its generated tokens and its time to first token."""
    body = {
        "model": MODEL,
        "prompt": text,
        "raw": True,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    headers = {} if priority is None else {"X-Corral-Priority": priority}
    started = time.perf_counter()
    first: float | None = None
    count = 0
    async with http.stream("POST", "/api/generate", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            chunk = json.loads(line)
            if first is None and chunk.get("response"):
                first = time.perf_counter()
            if chunk.get("done"):
                count = int(chunk.get("eval_count", 0))
    return count, (first if first is not None else time.perf_counter()) - started


async def idle(base: str, args: argparse.Namespace) -> Phase:
    phase = Phase("idle")
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        for i in range(args.idle_requests):
            _, ttft = await generate(http, prompt("idle", i), args.interactive_tokens, None)
            phase.ttfts.append(ttft)
    return phase


async def loaded(base: str, args: argparse.Namespace, name: str, batch_class: str | None) -> Phase:
    """The batch load with interactive requests arriving on a timer until the batch is done."""
    phase = Phase(name)
    limits = httpx.Limits(max_connections=args.batch_clients + 64)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:

        async def batch_client(c: int) -> int:
            done = 0
            for r in range(args.batch_requests):
                text = prompt(f"{name} batch", c * args.batch_requests + r)
                done += (await generate(http, text, args.batch_tokens, batch_class))[0]
            return done

        async def interactive(i: int) -> None:
            text = prompt(f"{name} interactive", i)
            phase.ttfts.append((await generate(http, text, args.interactive_tokens, None))[1])

        started = time.perf_counter()
        batch = asyncio.gather(*(batch_client(c) for c in range(args.batch_clients)))
        await asyncio.wait([batch], timeout=args.interactive_every)  # the batch fills the slots
        while not batch.done():
            await interactive(len(phase.ttfts))
            await asyncio.wait([batch], timeout=args.interactive_every)
        phase.batch_tokens = sum(await batch)
        phase.batch_seconds = time.perf_counter() - started
    return phase


def report(phase: Phase) -> None:
    print(
        f"{phase.name}: interactive_ttft_p50_s={phase.ttft_p50:.3f} "
        f"interactive_requests={len(phase.ttfts)} "
        f"batch_tokens_per_s={phase.batch_rate:.1f} batch_seconds={phase.batch_seconds:.1f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--parallel", type=int, default=4, help="the server's slots")
    parser.add_argument("--ctx", type=int, default=512, help="context per slot")
    parser.add_argument("--batch-clients", type=int, default=8)
    parser.add_argument("--batch-requests", type=int, default=3, help="per batch client")
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--interactive-tokens", type=int, default=8)
    parser.add_argument("--interactive-every", type=float, default=1.0, help="seconds")
    parser.add_argument("--idle-requests", type=int, default=8)
    parser.add_argument("--batch-share", type=float, help="CORRAL_PRIORITY_SHARES for batch")
    parser.add_argument("--reserved", type=int, default=1, help="CORRAL_PRIORITY_RESERVED_SLOTS")
    args = parser.parse_args()

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path

    env = {"CORRAL_PRIORITY_RESERVED_SLOTS": str(args.reserved)}
    if args.batch_share is not None:
        env["CORRAL_PRIORITY_SHARES"] = json.dumps({"batch": args.batch_share})
    with tempfile.TemporaryDirectory() as tmp:
        ModelStore(Path(tmp)).create_model(MODEL, args.model or test_model_path(), params={})
        with serving_process(
            Path(tmp),
            "--parallel",
            str(args.parallel),
            "--context-length",
            str(args.ctx),
            "--threads",
            str(args.threads),
            log=Path(tmp) / "serve.log",
            env=env,
        ) as server:
            base = server.base_url
            asyncio.run(idle(base, argparse.Namespace(**{**vars(args), "idle_requests": 2})))
            reference = asyncio.run(idle(base, args))
            report(reference)
            fifo = asyncio.run(loaded(base, args, "fifo", None))
            report(fifo)
            prioritized = asyncio.run(loaded(base, args, "priorities", "batch"))
            report(prioritized)
    print(
        f"interactive_ttft_p50_loaded_vs_idle_ratio_fifo={fifo.ttft_p50 / reference.ttft_p50:.2f}"
    )
    print(
        f"interactive_ttft_p50_loaded_vs_idle_ratio={prioritized.ttft_p50 / reference.ttft_p50:.2f}"
    )
    print(f"batch_throughput_kept={prioritized.batch_rate / fifo.batch_rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

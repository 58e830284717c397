"""Request priorities against one runtime: what a saturating batch load does to an interactive
user's time to first token, first-come-first-served and with priority classes, in one run.

Two ``corral serve`` (the bundled test model unless --model is given), each with --parallel
slots, are measured in --rounds rounds of four short phases each, an idle one before each
loaded one (on the server the loaded one uses):

- idle: interactive requests one at a time, nothing else running (the reference TTFT of the
  loaded phase that follows);
- fifo: --batch-clients clients stream --batch-requests generations of --batch-tokens tokens
  between them, each client its next one as soon as its last is done, more than the slots
  hold, while an interactive request arrives every --interactive-every seconds for --window
  seconds, whether or not the ones before it were answered (an open arrival). No request
  names a class, so all share one queue in arrival order, on a server with no reserved slots
  (the server as it was before priorities);
- priorities: the same load, the batch clients sending ``X-Corral-Priority: batch``, on a
  server with --reserved slots on top of its --parallel ones.

What the batch throughput compares: both loaded phases do the same work, the same batch
generations and the same interactive requests, and the batch rate is its tokens over the time
from the phase's start to its last batch token. The batch work outlasts the interactive
requests (each phase prints how many were answered after the batch was done: their work fell
outside the time measured, and it should be none), so the time holds all of both. By default
the interactive requests arrive over 20 s of some 30 s (two quiet cores; FIFO answers each 4 to
6 s after it is sent), so their tokens are about 6% of the work, near the 8% of the 10 s
window before. That window compared unequal work: under FIFO an interactive request waits
seconds behind the queued batch ones, so it held a third of FIFO's interactive generation and
all of the priorities server's (FIFO's batch looked faster for work it had not done yet).

On a shared machine the CPU a run gets moves by several times within minutes, so one long phase
of each compared phases that ran on different machines, in effect. Here every ratio is taken
within a round (a loaded TTFT over the idle one just before it, its priorities' batch rate over
the same round's FIFO one), the two loaded phases swap order from round to round, each loaded
phase does a fixed amount of work however fast the machine is, and what is printed is the
median over the rounds.

The interactive requests send no header (interactive is the default class). Every prompt differs
from its first words on, so no slot's cached prefix helps anyone. --reserved sets the priorities
server's CORRAL_PRIORITY_RESERVED_SLOTS (slots beyond --parallel that only interactive requests
take: on the FIFO server, where every request is interactive, they would be batch's too and
give FIFO more slots than the server before priorities had; default 1), and --batch-share its
CORRAL_PRIORITY_SHARES for batch (unset by default).

--baseline SRC adds a third server, the priorities one run from another copy of the runtime
(SRC: its ``runtime/src``, e.g. of ``git worktree add /tmp/before HEAD~1``), measured in every
round beside the other two (the three loaded phases rotate), so a change to the scheduling is
compared with the code before it on the same machine at the same time; it prints the
baseline's ratio and batch kept (its batch rate over the same round's FIFO one) too.

Printed last: ``interactive_ttft_p50_loaded_vs_idle_ratio=<x>`` with priorities (goal <= 1.5),
``interactive_ttft_p50_loaded_vs_idle_ratio_fifo=<x>``,
``batch_throughput_kept_per_server_cpu=<x>`` (the FIFO server's CPU seconds for its loaded
phase over the priorities server's for the same work: other processes on the machine move it
less than the wall time, though not at all, as llama.cpp's threads spin while they wait for
each other) and ``batch_throughput_kept=<x>`` (batch tokens per second with priorities over
FIFO's in the same round; goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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


_serial = itertools.count()


def fresh_prompt(kind: str) -> str:
    """A prompt unlike any other of the run (see ``prompt``)."""
    return prompt(kind, next(_serial))


@dataclass(slots=True)
class Phase:
    name: str
    ttfts: list[float] = field(default_factory=list)  # interactive requests'
    batch_tokens: int = 0
    interactive_late: int = 0  # interactive requests answered after the batch's last token
    batch_seconds: float = 0.0
    server_cpu_s: float = 0.0  # the server process's CPU time over the phase

    @property
    def ttft_p50(self) -> float:
        return statistics.median(self.ttfts)

    @property
    def batch_rate(self) -> float:
        return self.batch_tokens / self.batch_seconds if self.batch_seconds else 0.0


async def generate(
    http: httpx.AsyncClient,
    text: str,
    tokens: int,
    priority: str | None,
    on_piece: Callable[[], None] = lambda: None,
) -> float:
    """Stream one raw generation, calling ``on_piece`` for each piece; its time to first
    token."""
    body = {
        "model": MODEL,
        "prompt": text,
        "raw": True,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    headers = {} if priority is None else {"X-Corral-Priority": priority}
    started = time.perf_counter()
    first: float | None = None
    async with http.stream("POST", "/api/generate", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if json.loads(line).get("response"):
                on_piece()
                if first is None:
                    first = time.perf_counter()
    return (first if first is not None else time.perf_counter()) - started


async def idle(base: str, args: argparse.Namespace) -> Phase:
    phase = Phase("idle")
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        for _ in range(args.idle_requests):
            ttft = await generate(http, fresh_prompt("idle"), args.interactive_tokens, None)
            phase.ttfts.append(ttft)
    return phase


async def loaded(base: str, args: argparse.Namespace, name: str, batch_class: str | None) -> Phase:
    """The batch work (--batch-requests generations, its clients each sending its next as its
    last is done) with interactive requests arriving on a timer over its first --window
    seconds, each sent without waiting for those before; the batch rate is over the time from
    the start to its last token, and each TTFT is one under load."""
    phase = Phase(name)
    unsent = args.batch_requests
    last_batch_token = 0.0

    def count_batch() -> None:
        nonlocal last_batch_token
        phase.batch_tokens += 1
        last_batch_token = time.perf_counter()

    limits = httpx.Limits(max_connections=args.batch_clients + 64)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:

        async def batch_client() -> None:
            nonlocal unsent
            while unsent > 0:
                unsent -= 1
                text = fresh_prompt(f"{name} batch")
                await generate(http, text, args.batch_tokens, batch_class, count_batch)

        async def interactive_request() -> tuple[float, float]:
            """Its TTFT, and when it was answered."""
            text = fresh_prompt(f"{name} interactive")
            ttft = await generate(http, text, args.interactive_tokens, None)
            return ttft, time.perf_counter()

        started = time.perf_counter()
        batch = [asyncio.create_task(batch_client()) for _ in range(args.batch_clients)]
        await asyncio.sleep(args.interactive_every)  # the batch fills the slots
        interactive: list[asyncio.Task[tuple[float, float]]] = []
        sending_from = time.perf_counter()
        while time.perf_counter() - sending_from < args.window:
            interactive.append(asyncio.create_task(interactive_request()))
            await asyncio.sleep(args.interactive_every)
        await asyncio.gather(*batch)
        answers = await asyncio.gather(*interactive)
    phase.batch_seconds = last_batch_token - started
    phase.ttfts.extend(ttft for ttft, _ in answers)
    phase.interactive_late = sum(1 for _, answered in answers if answered > last_batch_token)
    return phase


@dataclass(frozen=True, slots=True)
class Round:
    """One round's ratios, each against a phase of the same round."""

    fifo_ratio: float  # FIFO's interactive TTFT p50 over the idle one
    priorities_ratio: float
    batch_kept: float  # batch tokens per second, priorities over FIFO
    batch_kept_cpu: float  # the server's CPU seconds for the same work, FIFO's over priorities'
    baseline_ratio: float | None = None  # the --baseline server's, as priorities_ratio
    baseline_kept: float | None = None  # its batch tokens per second over FIFO's


def round_ratios(idles: list[Phase], phases: dict[str, Phase]) -> Round:
    """A round's ratios: each loaded phase's TTFT against the idle phase just before it
    (``idles`` and ``phases`` in the order they ran)."""
    before = dict(zip(phases, idles, strict=True))
    fifo, priorities = phases["fifo"], phases["priorities"]
    baseline = phases.get("baseline")
    return Round(
        fifo.ttft_p50 / before["fifo"].ttft_p50,
        priorities.ttft_p50 / before["priorities"].ttft_p50,
        priorities.batch_rate / fifo.batch_rate,
        fifo.server_cpu_s / priorities.server_cpu_s,
        None if baseline is None else baseline.ttft_p50 / before["baseline"].ttft_p50,
        None if baseline is None else baseline.batch_rate / fifo.batch_rate,
    )


def loaded_order(round_: int, baseline: bool = False) -> tuple[str, ...]:
    """Which loaded phase runs first in a round: rotating, so a machine that speeds up or
    slows down over the run favours none."""
    names = ("fifo", "priorities", "baseline") if baseline else ("fifo", "priorities")
    turn = round_ % len(names)
    return names[turn:] + names[:turn]


def report(phase: Phase) -> None:
    print(
        f"{phase.name}: interactive_ttft_p50_s={phase.ttft_p50:.3f} "
        f"interactive_requests={len(phase.ttfts)} "
        f"interactive_answered_after_batch={phase.interactive_late} "
        f"batch_tokens_per_s={phase.batch_rate:.1f} batch_seconds={phase.batch_seconds:.1f} "
        f"server_cpu_s={phase.server_cpu_s:.1f}",
        flush=True,
    )


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user and system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mean_queue_wait(page: str, priority: str) -> float | None:
    """The mean of ``corral_queue_wait_seconds`` (accepted to holding a slot) for ``priority``
    in a ``/metrics`` page: how much of a TTFT was the wait for a slot, not the prompt's
    evaluation or a busy machine."""
    values = {}
    for line in page.splitlines():
        for part in ("sum", "count"):
            head = f"corral_queue_wait_seconds_{part}{{"
            if line.startswith(head) and f'priority="{priority}"' in line:
                values[part] = float(line.rsplit(" ", 1)[1])
    if not values.get("count"):
        return None
    return values["sum"] / values["count"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--parallel", type=int, default=4, help="the server's slots")
    parser.add_argument("--ctx", type=int, default=512, help="context per slot")
    parser.add_argument("--batch-clients", type=int, default=8)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of interactive")
    parser.add_argument("--batch-requests", type=int, default=40, help="per loaded phase")
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--interactive-tokens", type=int, default=8)
    parser.add_argument("--interactive-every", type=float, default=1.0, help="seconds")
    parser.add_argument("--idle-requests", type=int, default=4, help="before each phase")
    parser.add_argument("--rounds", type=int, default=5, help="odd: a median of its own")
    parser.add_argument("--batch-share", type=float, help="CORRAL_PRIORITY_SHARES for batch")
    parser.add_argument("--reserved", type=int, default=1, help="CORRAL_PRIORITY_RESERVED_SLOTS")
    parser.add_argument("--baseline", type=Path, help="runtime/src of the code to compare with")
    args = parser.parse_args()

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path

    env = {"CORRAL_PRIORITY_RESERVED_SLOTS": str(args.reserved)}
    if args.batch_share is not None:
        env["CORRAL_PRIORITY_SHARES"] = json.dumps({"batch": args.batch_share})
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        ModelStore(Path(tmp)).create_model(MODEL, args.model or test_model_path(), params={})
        flags = ["--parallel", str(args.parallel), "--context-length", str(args.ctx)]
        flags += ["--threads", str(args.threads)]
        envs = {"fifo": {}, "priorities": env}
        if args.baseline is not None:
            envs["baseline"] = {**env, "PYTHONPATH": str(args.baseline.resolve())}
        served = {
            name: servers.enter_context(
                serving_process(Path(tmp), *flags, log=Path(tmp) / f"{name}.log", env=server_env)
            )
            for name, server_env in envs.items()
        }
        bases = {name: server.base_url for name, server in served.items()}
        for base in bases.values():  # each loads its model
            asyncio.run(idle(base, argparse.Namespace(**{**vars(args), "idle_requests": 2})))
        rounds = []
        for number in range(args.rounds):
            phases, references = {}, []
            for name in loaded_order(number, args.baseline is not None):
                references.append(asyncio.run(idle(bases[name], args)))  # just before each
                report(references[-1])
                batch_class = None if name == "fifo" else "batch"
                cpu = cpu_seconds(served[name].process.pid)
                phases[name] = asyncio.run(loaded(bases[name], args, name, batch_class))
                phases[name].server_cpu_s = cpu_seconds(served[name].process.pid) - cpu
                report(phases[name])
            rounds.append(round_ratios(references, phases))
            ratios = rounds[-1]
            baseline = (
                ""
                if ratios.baseline_ratio is None
                else f"; baseline ttft ratio {ratios.baseline_ratio:.2f}, "
                f"batch kept {ratios.baseline_kept:.2f}"
            )
            print(
                f"round {number + 1}: ttft ratio fifo {ratios.fifo_ratio:.2f}, "
                f"priorities {ratios.priorities_ratio:.2f}; "
                f"batch kept {ratios.batch_kept:.2f} (per server CPU second "
                f"{ratios.batch_kept_cpu:.2f}){baseline}",
                flush=True,
            )
        page = httpx.get(bases["priorities"] + "/metrics", timeout=60).text
        for priority in ("interactive", "batch"):
            wait = mean_queue_wait(page, priority)
            if wait is not None:  # includes the idle phases' requests
                print(f"priorities server: {priority} queue_wait_mean_s={wait:.3f}")
    if args.baseline is not None:
        ratio = statistics.median(r.baseline_ratio or 0.0 for r in rounds)
        kept = statistics.median(r.baseline_kept or 0.0 for r in rounds)
        print(f"interactive_ttft_p50_loaded_vs_idle_ratio_baseline={ratio:.2f}")
        print(f"batch_throughput_kept_baseline={kept:.2f}")
    fifo_ratio = statistics.median(r.fifo_ratio for r in rounds)
    print(f"interactive_ttft_p50_loaded_vs_idle_ratio_fifo={fifo_ratio:.2f}")
    ratio = statistics.median(r.priorities_ratio for r in rounds)
    print(f"interactive_ttft_p50_loaded_vs_idle_ratio={ratio:.2f}")
    kept_cpu = statistics.median(r.batch_kept_cpu for r in rounds)
    print(f"batch_throughput_kept_per_server_cpu={kept_cpu:.2f}")
    print(f"batch_throughput_kept={statistics.median(r.batch_kept for r in rounds):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Multi-turn conversations on one runtime: the code here against another copy of the runtime,
on the same machine, in the same run.

Two ``corral serve`` (the bundled test model unless --model is given, --parallel slots each,
nothing else set) serve the same workload in phases that take turns (ABBA, --settle-seconds
apart): --conversations chats of --turns turns each, every turn streamed from ``/api/chat``
(greedy, --max-tokens answers) with the whole history so far, and a pause of up to
--think-seconds before each turn (seeded per conversation, the same on both sides). Each
conversation's next turn returns to the slot holding its history (the runtime's prefix reuse),
while the pauses make conversations come and go, so which slots are busy at once changes all
the time: this is the traffic where the busy slots' sequence ids scatter, and llama.cpp then
decodes each run of consecutive ids in a computation of its own.

``--baseline SRC`` is another copy's ``runtime/src`` (e.g. ``git archive HEAD~1 runtime/src |
tar -x -C /tmp/before``); without it both sides run the code here (a check of the method: the
ratio should be near 1).

Per phase it prints the aggregate decode rate (answer tokens over the phase's wall time, which
the pauses dominate), the time per answer token (the runtime's ``eval_duration`` of all turns
over their ``eval_count``: what a decode step took the streams), the p50 time to first token of
turns 2 and later, and the server's decode computations per decode step
(``corral_decode_computations_total`` over ``corral_decode_steps_total``, where the runtime
exports them; 1.0: every step one computation). Last lines:
``time_per_token_vs_baseline_ratio=<x>`` (below 1: faster here),
``conversations_rate_vs_baseline_ratio=<x>`` and ``ttft_later_p50_vs_baseline_ratio=<x>``
(medians over the repeats of each pair of phases).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support and the other benches when run as a script

from routing import MODEL, Phase, run_phase  # noqa: E402
from tests.support.serveproc import serving_process  # noqa: E402

SIDES = ("here", "baseline")


def counter(page: str, name: str) -> float | None:
    """The sum of a counter's samples (all models) in a ``/metrics`` page, None if absent."""
    total = None
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name:
                total = (total or 0.0) + sample.value
    return total


def computations_per_step(before: str, after: str) -> float | None:
    """Decode computations per decode step between two ``/metrics`` pages."""
    names = ("corral_decode_computations_total", "corral_decode_steps_total")
    values = [(counter(before, n), counter(after, n)) for n in names]
    if any(a is None or b is None for a, b in values):
        return None
    (c0, c1), (s0, s1) = values
    assert c0 is not None and c1 is not None and s0 is not None and s1 is not None
    return (c1 - c0) / (s1 - s0) if s1 > s0 else None


def order(repeat: int) -> tuple[str, ...]:
    """ABBA: the side that goes first alternates, so a drift of the machine's load falls on
    both alike."""
    return SIDES if repeat % 2 == 0 else SIDES[::-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--baseline", type=Path, help="runtime/src of the code to compare with")
    parser.add_argument("--parallel", type=int, default=16, help="slots of each server")
    parser.add_argument("--threads", type=int, help="decode threads (default: all cores)")
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--think-seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of phases")
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    args = parser.parse_args()

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path

    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    ttfts: dict[str, list[float]] = {side: [] for side in SIDES}
    per_token: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ModelStore(Path(tmp)).create_model(MODEL, args.model or test_model_path(), params={})
        flags = ["--parallel", str(args.parallel), "--log-level", "warning"]
        if args.threads:
            flags += ["--threads", str(args.threads)]
        bases = {}
        for side in SIDES:
            env = (
                {}
                if side == "here" or args.baseline is None
                else {"PYTHONPATH": str(args.baseline.resolve())}
            )
            served = serving_process(Path(tmp), *flags, log=Path(tmp) / f"{side}.log", env=env)
            bases[side] = stack.enter_context(served).base_url
            # Loads the model and touches its weights.
            asyncio.run(run_phase(bases[side], MODEL, side, "warm", 1, 1, 8))
        for repeat in range(args.repeats):
            for side in order(repeat):
                time.sleep(args.settle_seconds)
                page = httpx.get(bases[side] + "/metrics", timeout=60).text
                # A tag of its own per phase: no phase reuses another's cached prefixes.
                phase: Phase = asyncio.run(
                    run_phase(
                        bases[side],
                        MODEL,
                        side,
                        f"{side}-{repeat}",
                        args.conversations,
                        args.turns,
                        args.max_tokens,
                        args.think_seconds,
                    )
                )
                after = httpx.get(bases[side] + "/metrics", timeout=60).text
                per_step = computations_per_step(page, after)
                ttft = statistics.median(phase.ttft_later)
                rates[side].append(phase.rate)
                ttfts[side].append(ttft)
                per_token[side].append(phase.eval_seconds / phase.tokens)
                print(
                    f"run {repeat + 1}: {side} tokens={phase.tokens} seconds={phase.seconds:.1f} "
                    f"decode_tokens_per_second={phase.rate:.1f} "
                    f"time_per_token_ms={per_token[side][-1] * 1000:.1f} "
                    f"ttft_later_p50_ms={ttft * 1000:.0f} computations_per_decode_step="
                    + ("n/a" if per_step is None else f"{per_step:.2f}"),
                    flush=True,
                )

    def median_ratio(values: dict[str, list[float]]) -> float:
        pairs = zip(values["here"], values["baseline"], strict=True)
        return statistics.median(here / baseline for here, baseline in pairs)

    print(f"time_per_token_vs_baseline_ratio={median_ratio(per_token):.3f}")
    ratio = median_ratio(rates)
    ttft_ratio = median_ratio(ttfts)
    print(f"conversations_rate_vs_baseline_ratio={ratio:.3f}")
    print(f"ttft_later_p50_vs_baseline_ratio={ttft_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

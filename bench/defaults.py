"""What ``corral serve`` gives a user who sets nothing: aggregate decode rate of 8 concurrent
streams against one stream, from a server started with no flags.

The server is ``corral serve`` exactly as a user starts it, with no flags (only a free loopback
port and a store of its own holding the bundled test model, gemma3:270m) and without any
``CORRAL_*`` variable of this environment, so its slots are its own default (from the memory
budget). The bench reads them from ``/metrics`` (``corral_slots``) and prints them.

Eight prompts (different from their first words on and from every earlier round's, so no
prompt cache helps) are completed greedily with a fixed ``max_tokens``, one after another (1
stream) and all at once (8 streams); the aggregate rate is completion tokens over wall time.
Each of --repeats rounds runs both levels back to back (in turn first), so a shared machine's
load falls on both alike; the ratio is the median of the rounds' own ratios.

--compare LABEL=FLAGS (repeatable) also starts ``corral serve FLAGS`` and measures its single
stream in the same rounds, to show what the default costs or gains a lone stream against those
flags (``single_stream_default_vs_LABEL_ratio``: above 1.0, the default is faster; e.g.
``parallel_4=--parallel 4``, ``no_fa=--no-flash-attention``; words NAME=VALUE among the
flags go to its environment). --context-words N lengthens every
prompt by a passage of N words after its own opening (no two prompts share a prefix), for a
stream that holds a longer context as it decodes.

Last line: ``default_server_8_vs_1_ratio=<x>`` (goal >= 2.0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support and the other benches when run as a script

from concurrency import Level, measure, parse_variant, passage  # noqa: E402
from corral_runtime.store.layout import ModelStore  # noqa: E402
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model  # noqa: E402
from tests.support.serveproc import serving_process  # noqa: E402

STREAMS = 8


def slots_of(metrics: str, model: str) -> int | None:
    """The ``corral_slots`` gauge of ``model`` in a ``/metrics`` page."""
    for line in metrics.splitlines():
        if line.startswith("corral_slots{") and f'model="{model}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def round_ratio(rates: list[float], others: list[float]) -> float:
    """The median of each round's ``rates`` over its ``others`` (measured back to back)."""
    ratios = [rate / other for rate, other in zip(rates, others, strict=True)]
    print("round ratios: " + " ".join(f"{ratio:.2f}" for ratio in ratios))
    return statistics.median(ratios)


def round_of(
    base: str, model: str, concurrency: int, max_tokens: int, tail: str = "", start: int = 0
) -> Level:
    """Eight prompts (``concurrency.prompts`` from ``start``) once: at ``concurrency`` 1 one
    after another, at 8 all at once."""
    return asyncio.run(
        measure(base, model, concurrency, STREAMS // concurrency, max_tokens, tail, start)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both levels")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="also measure one stream of a server started with FLAGS (repeatable; words "
        "NAME=VALUE among them go to its environment)",
    )
    parser.add_argument(
        "--context-words",
        type=int,
        default=0,
        help="words of passage appended to every prompt (0: the short prompts alone)",
    )
    args = parser.parse_args()
    for key in [key for key in os.environ if key.startswith("CORRAL_")]:
        del os.environ[key]  # the server's settings are its defaults, not this shell's

    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        ensure_test_model(ModelStore(root / "models"))
        default = stack.enter_context(serving_process(root / "models", log=root / "default.log"))
        servers = {"default": default.base_url}
        for compared in args.compare:
            label, flags, env = parse_variant(compared)
            servers[label] = stack.enter_context(
                serving_process(root / "models", *flags, log=root / f"{label}.log", env=env)
            ).base_url
        tail = passage(args.context_words)
        start = STREAMS  # the prompts measured come after the warm-up's (see ``prompts``)
        for base in servers.values():
            round_of(base, TEST_MODEL_NAME, 1, 8)  # loads the model, touches its weights
            # A stream in every slot once, so no measured stream is the first of its slot (the
            # first use of a slot's KV memory faults its pages in).
            page = httpx.get(base + "/metrics", timeout=10).text
            every = slots_of(page, TEST_MODEL_NAME) or 1
            asyncio.run(measure(base, TEST_MODEL_NAME, every, 1, 8, start=STREAMS))
            start = max(start, STREAMS + every)
        slots = slots_of(httpx.get(default.base_url + "/metrics", timeout=10).text, TEST_MODEL_NAME)
        print(f"default server: slots={slots} ({TEST_MODEL_NAME}, no flags)", flush=True)
        for repeat in range(args.repeats):
            # Both levels back to back, in turn first, so a change of the machine's load falls
            # on both alike; each round's own ratio counts.
            for concurrency in (1, STREAMS) if repeat % 2 == 0 else (STREAMS, 1):
                for name, base in servers.items():
                    if name != "default" and concurrency != 1:
                        continue
                    level = round_of(
                        base, TEST_MODEL_NAME, concurrency, args.max_tokens, tail, start
                    )
                    rates.setdefault(f"{name}_{concurrency}", []).append(level.rate)
                    print(
                        f"run {repeat + 1}: {name} streams={concurrency} "
                        f"tokens={level.tokens} seconds={level.seconds:.2f} "
                        f"decode_tokens_per_second={level.rate:.1f}",
                        flush=True,
                    )
                start += STREAMS  # every server met these prompts once: fresh ones next
    for key, runs in rates.items():
        print(f"median: {key} decode_tokens_per_second={statistics.median(runs):.1f}")
    for label in [name for name in servers if name != "default"]:
        print(
            f"single_stream_default_vs_{label}_ratio="
            f"{round_ratio(rates['default_1'], rates[f'{label}_1']):.2f}"
        )
    print(f"default_server_slots={slots}")
    ratio = round_ratio(rates[f"default_{STREAMS}"], rates["default_1"])
    print(f"default_server_{STREAMS}_vs_1_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

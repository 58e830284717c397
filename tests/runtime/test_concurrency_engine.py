"""The continuous-batching engine on the real model, driven directly: output is the same alone
or in a batch of up to eight (greedy and seeded, prompts started together), every row's logits
are bit for bit its lone ones beside up to fifteen others, a cached prompt prefix is reused
without changing the answer, cancelling one sequence leaves the others untouched, the wait
queue is bounded in size and in time, and a generation past its deadline ends with an error
and frees its slot."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext, Row
from corral_runtime.engine.sampling import build_chain, free_chain
from corral_runtime.engine.scheduling import PREFILL_CHUNK
from corral_runtime.engine.types import (
    GenerationRequest,
    GenerationStats,
    GenerationTimeoutError,
    OutputFormat,
    QueueFullError,
    QueueTimeoutError,
    SamplingParams,
)
from corral_runtime.engine.worker import GenerationStream, LoadConfig, ModelWorker

pytestmark = pytest.mark.runtime

TURN = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea:",
    "def fibonacci(n):",
    "Once upon a time in a land far away,",
]
# Eight sequences at once: llama.cpp's CPU backend has kernels that take over at eight rows.
EIGHT_PROMPTS = [
    *PROMPTS,
    "List three uses of copper:",
    "Translate 'good morning' into Spanish:",
    "SELECT name FROM users WHERE",
    "The three primary colours are",
]
GREEDY = SamplingParams(temperature=0, num_predict=16)
SYSTEM = (
    "You are a helpful assistant for a small bakery. You answer questions about bread, cakes, "
    "opening hours and prices. Keep answers short and friendly, and never invent products the "
    "bakery does not sell. The bakery sells sourdough, rye bread, croissants, apple pie and "
    "carrot cake. It opens at seven in the morning and closes at six in the evening, every day "
    "except Sunday. "
)


@asynccontextmanager
async def loaded(
    model_path: Path,
    parallel: int,
    max_pending: int,
    *,
    warm_turns: bool = True,
    flash_attn: bool | None = None,
    n_batch: int = 512,
) -> AsyncIterator[ModelWorker]:
    config = LoadConfig(
        model_path=model_path,
        n_ctx=512,
        n_threads=2,
        parallel=parallel,
        warm_turns=warm_turns,
        flash_attn=flash_attn,
        n_batch=n_batch,
    )
    model = ModelWorker("gemma3:270m", config, max_pending=max_pending)
    await model.start()
    try:
        yield model
    finally:
        await model.close()


@pytest.fixture
async def worker(test_model_path: Path) -> AsyncIterator[ModelWorker]:
    async with loaded(test_model_path, parallel=4, max_pending=6) as model:
        yield model


@pytest.fixture
async def eight_slots(test_model_path: Path) -> AsyncIterator[ModelWorker]:
    async with loaded(test_model_path, parallel=8, max_pending=8) as model:
        yield model


async def complete(stream: GenerationStream) -> tuple[str, GenerationStats]:
    await stream.started()
    text = "".join([piece async for piece in stream])
    assert stream.stats is not None
    return text, stream.stats


async def run(
    worker: ModelWorker, prompt: str, params: SamplingParams
) -> tuple[str, GenerationStats]:
    return await complete(worker.generate(GenerationRequest(prompt=prompt, params=params)))


async def staggered(
    worker: ModelWorker, prompts: list[str], params: SamplingParams
) -> list[tuple[str, GenerationStats]]:
    """Start the requests a little apart, so prompts are evaluated while others decode."""
    tasks = []
    for prompt in prompts:
        tasks.append(asyncio.create_task(run(worker, prompt, params)))
        await asyncio.sleep(0.05)
    return await asyncio.gather(*tasks)


async def test_greedy_output_is_the_same_alone_and_in_a_batch(eight_slots: ModelWorker) -> None:
    alone = [await run(eight_slots, p, GREEDY) for p in EIGHT_PROMPTS]
    together = await staggered(eight_slots, EIGHT_PROMPTS, GREEDY)
    assert [text for text, _ in together] == [text for text, _ in alone]
    for text, stats in together:
        assert text and stats.done_reason == "length" and stats.eval_count == 16


async def test_the_same_seed_samples_the_same_alone_and_in_a_batch(
    eight_slots: ModelWorker,
) -> None:
    params = SamplingParams(temperature=1.0, top_k=64, top_p=0.95, seed=42, num_predict=16)
    alone = [await run(eight_slots, p, params) for p in EIGHT_PROMPTS]
    together = await staggered(eight_slots, EIGHT_PROMPTS, params)
    assert [t for t, _ in together] == [t for t, _ in alone]
    # And the seed matters: another one takes another path for at least one prompt.
    other = SamplingParams(temperature=1.0, top_k=64, top_p=0.95, seed=43, num_predict=16)
    reseeded = await staggered(eight_slots, EIGHT_PROMPTS, other)
    assert [t for t, _ in reseeded] != [t for t, _ in alone]


def rows_unlike_their_lone_logits(
    model_path: Path, slots: int, batch_invariant: bool = True
) -> dict[int, list[int]]:
    """``slots`` sequences of different prompts and lengths; each one's next token is decoded
    alone, then the first n of them in one batch for n = 2..slots: for each n where some rows'
    logits are not bit for bit their lone ones, which rows (a kernel that changes with the row
    count shows up at the count where it takes over)."""
    context = LlamaBatchContext(
        ContextConfig(
            model_path,
            n_ctx=128,
            parallel=slots,
            n_batch=64,
            n_threads=2,
            batch_invariant=batch_invariant,
        )
    )
    try:
        prompts = [context.tokenize(EIGHT_PROMPTS[s % 8] + " so" * (s // 8)) for s in range(slots)]
        for seq, tokens in enumerate(prompts):
            context.decode([Row(t, i, seq, False) for i, t in enumerate(tokens[:-1])])

        def step(seqs: list[int]) -> list[np.ndarray]:
            context.decode([Row(prompts[s][-1], len(prompts[s]) - 1, s, True) for s in seqs])
            out = [context.logits(i).copy() for i in range(len(seqs))]
            for s in seqs:
                assert context.keep_prefix(s, len(prompts[s]) - 1)
            return out

        alone = [step([s])[0] for s in range(slots)]
        assert len({a.tobytes() for a in alone}) == slots  # the rows are really different
        differing = {}
        for n in range(2, slots + 1):
            rows = step(list(range(n)))
            changed = [s for s in range(n) if not np.array_equal(rows[s], alone[s])]
            if changed:
                differing[n] = changed
        return differing
    finally:
        context.close()


def test_a_rows_logits_are_its_lone_ones_beside_up_to_fifteen_others(
    test_model_path: Path,
) -> None:
    assert rows_unlike_their_lone_logits(test_model_path, 16) == {}


@pytest.mark.skipif(
    "avx2" not in Path("/proc/cpuinfo").read_text(errors="replace"),
    reason="llama.cpp repacks weights for AVX2 CPUs (and others this test does not know)",
)
def test_without_batch_invariance_llama_cpps_faster_kernels_are_back(
    test_model_path: Path,
) -> None:
    # The kernels are chosen once per process, so a process of its own loads the model with
    # batch_invariant=False: rows then get other logits beside others (the price of the speed).
    script = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from tests.runtime.test_concurrency_engine import rows_unlike_their_lone_logits\n"
        "differing = rows_unlike_their_lone_logits(Path(sys.argv[1]), 8, batch_invariant=False)\n"
        "print(json.dumps([os.environ['GGML_CPU_TILED_MM'], sorted(differing)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(test_model_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
        check=True,
    )
    tiled, counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert tiled == "1"
    assert counts, "no row's logits changed beside others: the faster kernels did not run"


async def test_prompts_started_together_answer_as_they_would_alone(worker: ModelWorker) -> None:
    # One long prompt (several chunks) and three short ones arrive at once: their chunks are
    # evaluated at the same step, each on its own.
    requests = [TURN.format(SYSTEM * 3 + "When do you open?"), *PROMPTS[:3]]
    alone = [await run(worker, prompt, GREEDY) for prompt in requests]
    together = await asyncio.gather(*(run(worker, prompt, GREEDY) for prompt in requests))
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert together[0][1].prompt_eval_count > 3 * PREFILL_CHUNK


def test_the_arg_max_is_the_token_of_the_greedy_sampler(test_model_path: Path) -> None:
    context = LlamaBatchContext(
        ContextConfig(test_model_path, n_ctx=256, parallel=1, n_batch=64, n_threads=2)
    )
    try:
        tokens = context.tokenize("Once upon a time")
        context.decode([Row(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
        chain = build_chain(context, SamplingParams(temperature=0), tokens, grammar=None)
        try:
            index = len(tokens) - 1
            for pos in range(len(tokens), len(tokens) + 12):
                token = context.argmax(index)
                assert token == context.sample(chain, index)
                context.decode([Row(token, pos, 0, True)])
                index = 0
        finally:
            free_chain(chain)
    finally:
        context.close()


async def test_a_generation_past_its_deadline_fails_and_frees_its_slot(
    test_model_path: Path,
) -> None:
    config = LoadConfig(
        model_path=test_model_path, n_ctx=512, n_threads=2, parallel=1, generation_timeout_s=1.0
    )
    model = ModelWorker("gemma3:270m", config, max_pending=2)
    await model.start()
    try:
        endless = model.generate(GenerationRequest("1, 2, 3,", SamplingParams(temperature=0)))
        await endless.started()
        pieces = []
        with pytest.raises(GenerationTimeoutError, match="time limit of 1 s"):
            async for piece in endless:
                pieces.append(piece)
        assert pieces and endless.stats is None
        assert model.busy_slots == 0 and model.pending == 0
        # Two tokens: the slot is free and serves again, well within the 1 s limit on a busy
        # machine.
        text, stats = await run(model, "4, 5,", SamplingParams(temperature=0, num_predict=2))
        assert text and stats.done_reason == "length"
    finally:
        await model.close()


async def test_grammar_stops_and_penalties_hold_per_sequence_in_a_batch(
    worker: ModelWorker,
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    requests = [
        (
            TURN.format("Describe a person as JSON."),
            SamplingParams(temperature=0, num_predict=48, output_format=OutputFormat(schema)),
        ),
        ("Count: 1, 2, 3,", SamplingParams(temperature=0, num_predict=24, stop=(" 6",))),
        ("Count: 1, 2, 3,", SamplingParams(temperature=0, num_predict=12, repeat_penalty=1.5)),
        (PROMPTS[0], GREEDY),
    ]
    alone = [await run(worker, prompt, params) for prompt, params in requests]
    tasks = [asyncio.create_task(run(worker, prompt, params)) for prompt, params in requests]
    together = await asyncio.gather(*tasks)
    assert [t for t, _ in together] == [t for t, _ in alone]
    (json_text, json_stats), (stopped, stop_stats), (penalized, _), _ = together
    jsonschema.validate(json.loads(json_text), schema)
    assert json_stats.done_reason == "stop"
    assert stop_stats.done_reason == "stop" and " 6" not in stopped and "5" in stopped
    plain, _ = await run(worker, "Count: 1, 2, 3,", SamplingParams(temperature=0, num_predict=12))
    assert penalized != plain  # the penalty applied to its own sequence only


async def test_a_shared_prefix_is_reused_without_changing_the_answer(
    worker: ModelWorker,
) -> None:
    first = TURN.format(SYSTEM + "When do you open?")
    second = TURN.format(SYSTEM + "Do you sell rye bread?")
    fresh, fresh_stats = await run(worker, second, GREEDY)
    assert fresh_stats.cached_prompt_tokens == 0
    # Four slots hold four conversations; the next request with the same long prefix lands
    # on a slot that has it, and evaluates only what follows.
    await run(worker, first, GREEDY)
    again, stats = await run(worker, second, GREEDY)
    assert stats.cached_prompt_tokens >= PREFILL_CHUNK
    assert stats.cached_prompt_tokens % PREFILL_CHUNK == 0
    assert stats.prompt_eval_count == fresh_stats.prompt_eval_count
    assert again == fresh


async def test_a_follow_up_turn_reuses_the_conversation(worker: ModelWorker) -> None:
    opening = TURN.format(SYSTEM + "What cakes do you have?")
    answer, _ = await run(worker, opening, GREEDY)
    follow_up = opening + answer + "<end_of_turn>\n" + TURN.format("And what bread?")
    _, stats = await run(worker, follow_up, GREEDY)
    opening_tokens = len(await worker.tokenize(opening))
    assert stats.cached_prompt_tokens == opening_tokens // PREFILL_CHUNK * PREFILL_CHUNK


async def test_cancelling_one_stream_leaves_the_others_untouched(worker: ModelWorker) -> None:
    long = SamplingParams(temperature=0, num_predict=40)
    alone = [await run(worker, p, long) for p in PROMPTS[1:]]
    victim = worker.generate(GenerationRequest(prompt=PROMPTS[0], params=long))
    await victim.started()
    others = [asyncio.create_task(run(worker, p, long)) for p in PROMPTS[1:]]
    pieces = 0
    async for _ in victim:
        pieces += 1
        if pieces == 3:
            victim.cancel()
    assert victim.stats is not None and victim.stats.done_reason == "cancelled"
    assert victim.stats.eval_count < 40
    results = await asyncio.gather(*others)
    assert [t for t, _ in results] == [t for t, _ in alone]
    assert worker.busy_slots == 0 and worker.pending == 0


async def test_embeddings_work_while_streams_decode(worker: ModelWorker) -> None:
    streams = [asyncio.create_task(run(worker, p, GREEDY)) for p in PROMPTS[:2]]
    await asyncio.sleep(0.1)
    result = await worker.embed(["hello world", "bread"], truncate=True)
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 640
    assert all(stats.done_reason == "length" for _, stats in await asyncio.gather(*streams))


async def test_the_queue_is_bounded_in_size_and_in_time(test_model_path: Path) -> None:
    config = LoadConfig(
        model_path=test_model_path, n_ctx=512, n_threads=2, parallel=1, queue_timeout_s=0.5
    )
    model = ModelWorker("gemma3:270m", config, max_pending=2)
    await model.start()
    try:
        busy = model.generate(GenerationRequest("1, 2, 3,", SamplingParams(temperature=0)))
        await busy.started()
        waiting = model.generate(GenerationRequest("4, 5,", GREEDY))
        with pytest.raises(QueueFullError, match="maximum pending requests exceeded"):
            model.generate(GenerationRequest("6, 7,", GREEDY))
        assert model.queued == 1 and model.busy_slots == 1
        with pytest.raises(QueueTimeoutError, match="server busy"):
            await waiting.started()
        busy.cancel()
        async for _ in busy:
            pass
        assert busy.stats is not None and busy.stats.done_reason == "cancelled"
        # Two tokens: the slot is free and serves again, well within the 1 s limit on a busy
        # machine.
        text, stats = await run(model, "4, 5,", SamplingParams(temperature=0, num_predict=2))
        assert text and stats.done_reason == "length"
        assert model.pending == 0
    finally:
        await model.close()


def test_the_arg_max_of_every_row_at_once_is_each_rows(test_model_path: Path) -> None:
    context = LlamaBatchContext(
        ContextConfig(test_model_path, n_ctx=128, parallel=4, n_batch=64, n_threads=2)
    )
    try:
        prompts = [context.tokenize(prompt) for prompt in PROMPTS]
        for seq, tokens in enumerate(prompts):
            context.decode([Row(t, i, seq, False) for i, t in enumerate(tokens[:-1])])
        context.decode([Row(p[-1], len(p) - 1, s, True) for s, p in enumerate(prompts)])
        each = [context.argmax(index) for index in range(len(prompts))]
        assert len(set(each)) > 1  # the rows really differ
        assert context.argmax_rows(len(prompts)) == each
    finally:
        context.close()

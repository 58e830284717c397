"""Single-stream decode speed of the runtime server against llama-cpp-python in-process.

Both sides load the same GGUF (the bundled test model unless --model is given) with the same
context length, threads and batch size, and decode greedily from the same raw prompt. The
in-process side times llama-cpp-python's own token loop; the server side is `corral serve` in a
subprocess, timed by a streaming /api/generate client from its first token to its last, so
HTTP, JSON framing and the event loop are all counted. Runs alternate between the sides to
share the machine's noise, and only one side holds the model at a time (llama.cpp's worker
threads would otherwise compete). On a shared machine other processes make single runs swing
widely, so each ratio compares best runs (each side's speed when least disturbed); medians are
printed too.

The server loads weights with llama.cpp's CPU repacking off (it would make a sequence's output
depend on how many others share its batch), so the in-process side runs twice per round:
with the server's model settings (repacking off: the same model and settings, the comparison
the goal is about) and with llama-cpp-python's defaults (repacking on, for reference).

Prints one line per run, a summary, and last `server_vs_inprocess_defaults_ratio=<x>` and
`server_vs_inprocess_ratio=<x>` (same settings; goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PROMPT = "1, 2, 3, 4, 5,"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def weight_repacking(enabled: bool) -> Iterator[None]:
    """Models that ``llama_cpp.Llama`` loads meanwhile repack their weights for the CPU, or not
    (its constructor has no parameter for it; the server sets ``use_extra_bufts`` itself)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> object:
        value = original()
        value.use_extra_bufts = enabled
        return value

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def inprocess_tokens_per_second(llm: object, tokens: int) -> float:
    import llama_cpp

    assert isinstance(llm, llama_cpp.Llama)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    stamps: list[float] = []
    for token in llm.generate(prompt, top_k=40, top_p=0.9, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        stamps.append(time.perf_counter())
        llm.detokenize([token])
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(stamps) >= tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def server_tokens_per_second(client: httpx.Client, tokens: int) -> tuple[float, float]:
    body = {
        "model": "bench:latest",
        "prompt": PROMPT,
        "raw": True,
        "options": {"temperature": 0, "num_predict": tokens},
    }
    stamps: list[float] = []
    final: dict[str, object] = {}
    with client.stream("POST", "/api/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            chunk = json.loads(line)
            if chunk["done"]:
                final = chunk
            else:
                stamps.append(time.perf_counter())
    client_rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    eval_count = int(str(final["eval_count"]))
    server_rate = eval_count / (int(str(final["eval_duration"])) / 1e9)
    return client_rate, server_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the bundled test model)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    import llama_cpp

    from corral_runtime.store.layout import ModelStore
    from corral_runtime.testmodel import GEMMA_PARAMS, test_model_path

    model_path = args.model or test_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        # Only the model layer and a stop: raw prompts need no template.
        store.create_model("bench", model_path, params={"stop": GEMMA_PARAMS["stop"]})
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral_runtime.cli",
                "serve",
                "--port",
                str(port),
                "--models",
                tmp,
                "--threads",
                str(args.threads),
                "--context-length",
                str(args.ctx),
                "--gpu-layers",
                str(args.gpu_layers),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
            same: list[float] = []
            defaults: list[float] = []
            served: list[float] = []
            for run in range(args.runs + 1):  # run 0 warms up (page cache, thread pools)
                rates = {}
                for repack in (False, True):
                    with weight_repacking(repack):
                        llm = llama_cpp.Llama(
                            str(model_path),
                            n_ctx=args.ctx,
                            n_batch=512,
                            n_ubatch=512,
                            n_threads=args.threads,
                            n_threads_batch=args.threads,
                            n_gpu_layers=args.gpu_layers,
                            verbose=False,
                        )
                    rates[repack] = inprocess_tokens_per_second(llm, args.tokens)
                    llm.close()
                client.post("/api/generate", json={"model": "bench:latest", "prompt": ""})
                client_rate, engine_rate = server_tokens_per_second(client, args.tokens)
                client.post(
                    "/api/generate", json={"model": "bench:latest", "prompt": "", "keep_alive": 0}
                )
                if run == 0:
                    continue
                same.append(rates[False])
                defaults.append(rates[True])
                served.append(client_rate)
                print(
                    f"run {run}: in-process same settings (repacking off) {rates[False]:.1f} "
                    f"tok/s, in-process defaults (repacking on) {rates[True]:.1f} tok/s, "
                    f"server {client_rate:.1f} tok/s (engine-reported {engine_rate:.1f})",
                    flush=True,
                )
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"model={model_path.name} tokens={args.tokens} threads={args.threads} "
        f"ctx={args.ctx} gpu_layers={args.gpu_layers} runs={args.runs}"
    )
    server_median = statistics.median(served)
    for label, local in (("same settings", same), ("defaults", defaults)):
        print(
            f"median: in-process ({label}) {statistics.median(local):.2f} tok/s, server "
            f"{server_median:.2f} tok/s, ratio {server_median / statistics.median(local):.3f}"
        )
    print(f"inprocess_same_settings_tokens_per_second={max(same):.2f}")
    print(f"inprocess_defaults_tokens_per_second={max(defaults):.2f}")
    print(f"server_tokens_per_second={max(served):.2f}")
    print(f"server_vs_inprocess_defaults_ratio={max(served) / max(defaults):.3f}")
    print(f"server_vs_inprocess_ratio={max(served) / max(same):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

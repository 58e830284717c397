"""Two models behind one server whose memory budget holds only one, against a fresh server per
model.

The two test models (gemma3:270m and qwen2.5-coder:0.5b, assembled from their PyPI packages) go
into one store. The multi-model side is one ``corral serve`` with ``CORRAL_MEMORY_BUDGET_BYTES``
set between the larger model's estimate and the two together, so every request for the other
model evicts the loaded one and loads its own: requests alternate between the models (streamed
``/api/generate``, greedy, a few tokens), and a request's time to first token is its switch time
(unload, load, prefill). The baseline is a cold start on the same machine: a fresh ``corral
serve`` of the same store per model, timed from launching the process to the first token of the
same request. Each blob is loaded once before timing (the server's one-time probe of a new
blob is not what either side measures), and each is a private copy: the store hard-links the
cached GGUFs, and every other store linking them changes their inode's ctime, which makes the
server verify and probe the blob again at its next load (a probe is a child process holding
the model, which would count in the peak below).

While the multi-model server runs, a sampler reads the resident memory (VmRSS in /proc) of the
server process and its child processes (model probes) every 20 ms; the peak is compared with the
budget.

Prints requests per minute, p50 switch time, p50 cold start, and last
``switch_overhead_vs_cold_start_ratio=<x>`` (goal <= 1.0: a switch costs no more than a cold
start) and ``peak_rss_vs_budget_ratio=<x>`` (goal <= 1.0: never above the budget).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

from corral_runtime.instructmodel import ensure_instruct_model  # noqa: E402
from corral_runtime.store.layout import ModelStore  # noqa: E402
from corral_runtime.testmodel import ensure_test_model  # noqa: E402
from tests.support.serveproc import first_token_at, serving_process  # noqa: E402

# Between qwen2.5-coder:0.5b's estimate (about 0.9 GB at the default context) and both models'
# (about 1.6 GB): one model at a time.
DEFAULT_BUDGET = 1 << 30
PROMPT = "Name three colours."


def first_token_seconds(base_url: str, model: str, tokens: int) -> float:
    """Send one streamed greedy generate; seconds from sending it to its first token (the
    stream is then read to its end)."""
    started = time.perf_counter()
    return first_token_at(base_url, model, PROMPT, tokens) - started


def process_tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (from /proc; 0 for one that is gone)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{current}/task").glob("*"):
            with suppress(OSError):  # a thread that ended between listing and reading
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total


@contextmanager
def peak_rss(pid: int, interval: float = 0.02) -> Iterator[list[int]]:
    """Sample ``process_tree_rss(pid)`` until the block ends; the list holds the peak."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process_tree_rss(pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def detach(blob: Path) -> None:
    """Make ``blob`` a file of its own (the same bytes, a new inode with one link)."""
    copy = blob.with_name(blob.name + ".copy")
    shutil.copyfile(blob, copy)
    copy.replace(blob)


def cold_start_seconds(models: Path, model: str, tokens: int, log: Path) -> float:
    """A fresh ``corral serve``: seconds from launching it to the first token for ``model``."""
    started = time.perf_counter()
    with serving_process(models, log=log) as served:
        waited = time.perf_counter() - started
        return waited + first_token_seconds(served.base_url, model, tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="bytes")
    parser.add_argument("--switches", type=int, default=12, help="alternating requests timed")
    parser.add_argument("--cold-starts", type=int, default=3, help="per model")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per request")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="corral-multimodel-") as tmp:
        root = Path(tmp) / "models"
        store = ModelStore(root)
        models = [ensure_test_model(store), ensure_instruct_model(store)]
        for model in models:
            detach(model.model_path)
        names = [model.name.display for model in models]
        log = Path(tmp) / "serve.log"

        # Each blob loaded (and probed) once, outside the timings.
        for name in names:
            cold_start_seconds(root, name, args.tokens, log)

        cold: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.cold_starts):
            for name in names:
                cold[name].append(cold_start_seconds(root, name, args.tokens, log))
        cold_all = [s for runs in cold.values() for s in runs]
        for name, runs in cold.items():
            print(f"cold_start_p50_s[{name}]={statistics.median(runs):.3f}")

        env = {"CORRAL_MEMORY_BUDGET_BYTES": str(args.budget)}
        with serving_process(root, log=log, env=env) as served:
            first_token_seconds(served.base_url, names[0], args.tokens)  # the first load
            switches: list[float] = []
            with peak_rss(served.process.pid) as peak:
                started = time.perf_counter()
                for i in range(args.switches):
                    name = names[(i + 1) % 2]
                    switches.append(first_token_seconds(served.base_url, name, args.tokens))
                    loaded = httpx.get(f"{served.base_url}/api/ps", timeout=30).json()["models"]
                    if [m["name"] for m in loaded] != [name]:
                        raise RuntimeError(f"expected only {name} loaded, /api/ps: {loaded}")
                elapsed = time.perf_counter() - started
            if not served.alive():
                raise RuntimeError("the server died:\n" + served.log_tail())

    switch_p50 = statistics.median(switches)
    cold_p50 = statistics.median(cold_all)
    print(f"budget_bytes={args.budget}")
    print(f"requests={len(switches)} (every one a model switch)")
    print(f"requests_per_minute={len(switches) / elapsed * 60:.1f}")
    print(f"switch_p50_s={switch_p50:.3f}")
    print(f"cold_start_p50_s={cold_p50:.3f}")
    print(f"peak_rss_bytes={peak[0]}")
    print(f"switch_overhead_vs_cold_start_ratio={switch_p50 / cold_p50:.3f}")
    print(f"peak_rss_vs_budget_ratio={peak[0] / args.budget:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

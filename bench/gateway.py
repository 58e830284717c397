"""Gateway benchmark: what the gateway adds on top of calling a runtime pod directly.

Starts a real runtime (``corral serve``, the test model) and the gateway
(``python -m corral_operator.gateway`` in front of it) as separate processes on loopback, then
measures, interleaving direct and gateway calls so both see the same machine load:

- added latency of a 1-token ``/api/generate`` (non-streaming): p50 and p99 of the gateway's
  latencies minus the direct ones;
- streaming throughput: tokens/s of a 64-token stream through the gateway over direct (median of
  several runs each).

- scale from zero on the local stack (``tests.support.stack``: control plane, node agent,
  operator, gateway; needs root for the pods' network namespaces): a streamed ``/api/generate``
  through the gateway to a ModelServer at zero replicas, timed to its first token, minus the
  model load time the runtime itself reports (``load_duration``): what waking adds (scale write,
  scheduling, process start, readiness, proxying). Median of ``COLD_RUNS``; the server is scaled
  back to zero and its pod waited out between runs. ``--no-cold`` skips it (prints ``nan``).

Last lines: ``gateway_overhead_p50_ms=<x>`` (goal ≤ 2), ``gateway_stream_ratio=<x>``
(goal ≥ 0.98), ``scale_from_zero_overhead_ms=<x>`` (goal ≤ 1500).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (the local stack) when run as a script
BIN = ROOT / ".venv" / "bin"
MODEL = "gemma3:270m"
ROUNDS = 200
STREAM_RUNS = 5
STREAM_TOKENS = 64
COLD_RUNS = 3
COLD_NAMESPACE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(args: list[str], env: dict[str, str], url: str) -> Iterator[None]:
    proc = subprocess.Popen(args, env={**os.environ, **env})
    try:
        wait_up(url, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def one_token(client: httpx.Client, base: str) -> float:
    body = {
        "model": MODEL,
        "prompt": "Hi",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 1, "seed": 1},
    }
    started = time.perf_counter()
    response = client.post(base + "/api/generate", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def stream_rate(client: httpx.Client, base: str) -> float:
    """Tokens per second between the first and the last token of a stream."""
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "options": {"temperature": 0, "num_predict": STREAM_TOKENS, "seed": 1},
    }
    stamps: list[float] = []
    with client.stream("POST", base + "/api/generate", json=body) as response:
        for line in response.iter_lines():
            if line and not json.loads(line).get("done"):
                stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def first_token(client: httpx.Client, base: str, model: str) -> tuple[float, float]:
    """Seconds to the first token of a stream and the runtime's reported load time."""
    body = {
        "model": model,
        "prompt": "Hi",
        "options": {"temperature": 0, "num_predict": 4, "num_ctx": 1024, "seed": 1},
    }
    started = time.perf_counter()
    to_first: float | None = None
    load = 0.0
    with client.stream("POST", base + "/api/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.strip():
                continue  # the gateway's keep-alive bytes while the pod starts
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if to_first is None and chunk.get("response"):
                to_first = time.perf_counter() - started
            if chunk.get("done"):
                load = chunk.get("load_duration", 0) / 1e9
    if to_first is None:
        raise RuntimeError("the stream carried no token")
    return to_first, load


def scale_from_zero() -> list[float]:
    """Cold first-token time minus reported load time, in seconds, for each run."""
    from tests.support.stack import Stack, wait_for

    overheads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as state:
        stack = Stack(Path(state))
        try:
            stack.up(
                gateway_port=free_port(),
                gateway_env={"CORRAL_GATEWAY_ACTIVITY_INTERVAL_SECONDS": "1"},
            )
            stack.kubectl("create", "namespace", COLD_NAMESPACE)
            wait_for(
                "the namespace's service account",
                lambda: stack.get("serviceaccount", "default", COLD_NAMESPACE),
                30,
            )
            docs = stack.apply_sample(COLD_NAMESPACE)
            model = next(d for d in docs if d["kind"] == "Model")["metadata"]["name"]
            server = next(d for d in docs if d["kind"] == "ModelServer")["metadata"]["name"]
            stack.wait_ready("model", model, COLD_NAMESPACE)
            stack.wait_ready("modelserver", server, COLD_NAMESPACE)

            def no_pods() -> bool:
                done = stack.kubectl(
                    "get",
                    "pods",
                    "-n",
                    COLD_NAMESPACE,
                    "-l",
                    f"corral.dev/modelserver={server}",
                    "-o",
                    "name",
                )
                return not done.stdout.strip()

            def listed() -> bool:
                tags = httpx.get(stack.gateway_url + "/api/tags", timeout=5).json()["models"]
                return any(t["name"].startswith(model) for t in tags)

            wait_for("the gateway to route the model", listed, 30)
            with httpx.Client(timeout=300) as client:
                for run in range(COLD_RUNS):
                    wait_for("the server at zero", no_pods, 120)
                    to_first, load = first_token(client, stack.gateway_url, model)
                    overheads.append(to_first - load)
                    print(
                        f"cold run {run + 1}: first token {to_first * 1000:.0f}ms, "
                        f"runtime load {load * 1000:.0f}ms",
                        flush=True,
                    )
                    stack.kubectl(
                        "scale", "modelserver", server, "-n", COLD_NAMESPACE, "--replicas=0"
                    )
        finally:
            stack.down()
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cold", action="store_true", help="skip scale from zero")
    args = parser.parse_args()
    warm()
    if args.no_cold:
        print("scale_from_zero_overhead_ms=nan")
        return
    overheads = scale_from_zero()
    print(f"scale_from_zero_overhead_ms={statistics.median(overheads) * 1000:.0f}")


def warm() -> None:
    """Direct vs gateway against one running runtime: added latency and stream ratio."""
    runtime_port, gateway_port = free_port(), free_port()
    direct = f"http://127.0.0.1:{runtime_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    runtime_cmd = [
        str(BIN / "corral"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
        "--context-length",
        "2048",
    ]
    gateway_env = {
        "CORRAL_GATEWAY_HOST": "127.0.0.1",
        "CORRAL_GATEWAY_PORT": str(gateway_port),
        "CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(
            {"bench": {"models": [MODEL], "endpoints": [f"127.0.0.1:{runtime_port}"]}}
        ),
    }
    gateway_cmd = [sys.executable, "-m", "corral_operator.gateway"]
    with (
        process(runtime_cmd, {}, direct + "/"),
        process(gateway_cmd, gateway_env, gateway + "/"),
        httpx.Client(timeout=120) as client,
    ):
        for _ in range(5):  # load the model, warm both connection pools
            one_token(client, direct)
            one_token(client, gateway)
        direct_times, gateway_times = [], []
        for _ in range(ROUNDS):
            direct_times.append(one_token(client, direct))
            gateway_times.append(one_token(client, gateway))
        direct_rates, gateway_rates = [], []
        for _ in range(STREAM_RUNS):
            direct_rates.append(stream_rate(client, direct))
            gateway_rates.append(stream_rate(client, gateway))

    p50 = (percentile(gateway_times, 0.5) - percentile(direct_times, 0.5)) * 1000
    p99 = (percentile(gateway_times, 0.99) - percentile(direct_times, 0.99)) * 1000
    ratio = statistics.median(gateway_rates) / statistics.median(direct_rates)
    print(
        f"direct 1-token p50={percentile(direct_times, 0.5) * 1000:.2f}ms "
        f"p99={percentile(direct_times, 0.99) * 1000:.2f}ms; "
        f"gateway p50={percentile(gateway_times, 0.5) * 1000:.2f}ms "
        f"p99={percentile(gateway_times, 0.99) * 1000:.2f}ms"
    )
    print(
        f"stream tokens/s direct={statistics.median(direct_rates):.1f} "
        f"gateway={statistics.median(gateway_rates):.1f}"
    )
    print(f"gateway_overhead_p99_ms={p99:.2f}")
    print(f"gateway_overhead_p50_ms={p50:.2f}")
    print(f"gateway_stream_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()

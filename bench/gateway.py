"""Gateway benchmark: what the gateway adds on top of calling a runtime pod directly.

Starts a real runtime (``corral serve``, the test model) and the gateway
(``python -m corral_operator.gateway`` in front of it) as separate processes on loopback, then
measures, interleaving direct and gateway calls so both see the same machine load:

- added latency of a 1-token ``/api/generate`` (non-streaming): p50 and p99 of the gateway's
  latencies minus the direct ones;
- streaming throughput: tokens/s of a 64-token stream through the gateway over direct (median of
  several runs each).

Scale-from-zero time needs the operator and a node agent running runtime pods on the control
plane; it is measured only when ``--cold`` is given and such a cluster is available, and printed
as ``nan`` otherwise. Last lines: ``gateway_overhead_p50_ms=<x>`` (goal ≤ 2),
``gateway_stream_ratio=<x>`` (goal ≥ 0.98), ``scale_from_zero_overhead_ms=<x>`` (goal ≤ 1500).
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
MODEL = "gemma3:270m"
ROUNDS = 200
STREAM_RUNS = 5
STREAM_TOKENS = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
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


def main() -> None:
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
    # Not measured here: it needs the operator and runtime pods on a cluster (see the docstring).
    print("scale_from_zero_overhead_ms=nan")


if __name__ == "__main__":
    main()

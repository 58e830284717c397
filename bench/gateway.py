"""Gateway benchmark: what the gateway adds on top of calling a runtime pod directly.

Starts a real runtime (``corral serve``, the test model) and the gateway
(``python -m corral_operator.gateway`` in front of it) as separate processes on loopback, then
measures, interleaving direct and gateway calls so both see the same machine load:

- added latency of a 1-token ``/api/generate`` (non-streaming): p50 and p99 of the gateway's
  latencies minus the direct ones;
- streaming throughput: tokens/s of a 64-token stream through the gateway over direct (median of
  several runs each).

- scale from zero on the local cluster (``devstack``: the control plane, a real node running
  containers from the images built here, the chart installed; needs root): a streamed
  ``/api/generate`` through the gateway (the chart's, in a pod, reached through its NodePort and
  kube-proxy) to a ModelServer at zero replicas, timed to its first token, minus the model load
  time the runtime itself reports (``load_duration``): what waking adds (scale write,
  scheduling, sandbox and container start, readiness, proxying). Median of ``COLD_RUNS``; the
  server is scaled back to zero and its pod waited out between runs. ``--no-cold`` skips it
  (prints ``nan``). Runs alternate between the chart's gateway, which probes a starting pod
  itself and sends it the request as soon as it answers, and a second gateway (a process on
  this machine, which reaches pod IPs) that waits for the pod to be Ready in the Endpoints
  (``scale_from_zero_overhead_ms_without_probing``).
  Each run also prints where the time went: when this process saw (by watching the API server)
  the ModelServer and Deployment asked for a replica, the pod created, scheduled, given an IP,
  listed as a not-ready endpoint, Ready, and a ready endpoint; then the first token.

- the proxy's own cost, free of a model's noise: the same non-streaming ``/api/generate`` sent
  to a stub runtime (a bare asyncio server answering a fixed body at once, in a process of its
  own) directly and through the gateway, interleaved, ``PROXY_ROUNDS`` times; the overhead is
  each gateway call minus the direct call next to it (p50 and p99 of those differences).

Last lines: ``gateway_proxy_overhead_p50_ms=<x>`` (goal ≤ 1), ``gateway_proxy_overhead_p99_ms``
(goal ≤ 3), ``gateway_overhead_p50_ms=<x>`` (against the real runtime, goal ≤ 2),
``gateway_stream_ratio=<x>`` (goal ≥ 0.98), ``scale_from_zero_overhead_ms=<x>`` (goal ≤ 1500).
The gateway's event loop and HTTP parser (asyncio and httptools when installed) are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devstack (the local cluster) when run as a script
BIN = ROOT / ".venv" / "bin"
MODEL = "gemma3:270m"
ROUNDS = 200
STREAM_RUNS = 5
STREAM_TOKENS = 64
COLD_RUNS = 3
COLD_NAMESPACE = "bench"
PROXY_ROUNDS = 2000
STUB_ANSWER = json.dumps(
    {"model": MODEL, "created_at": "2026-01-01T00:00:00Z", "response": "Hi", "done": True}
).encode()


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


@dataclass(frozen=True)
class ColdAnswer:
    to_first: float
    """Seconds from sending the request to the first token."""
    load: float
    """The runtime's own ``load_duration`` (seconds)."""
    prompt_eval: float
    """The runtime's ``prompt_eval_duration`` (seconds): a fresh process's first evaluation
    also pays for touching the mapped weights."""


def first_token(
    client: httpx.Client, base: str, model: str, started: float | None = None
) -> ColdAnswer:
    """Time to the first token of a stream and the durations the runtime reports."""
    body = {
        "model": model,
        "prompt": "Hi",
        "options": {"temperature": 0, "num_predict": 4, "num_ctx": 1024, "seed": 1},
    }
    started = time.perf_counter() if started is None else started
    to_first: float | None = None
    done: dict[str, Any] = {}
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
                done = chunk
    if to_first is None:
        raise RuntimeError("the stream carried no token")
    return ColdAnswer(
        to_first,
        done.get("load_duration", 0) / 1e9,
        done.get("prompt_eval_duration", 0) / 1e9,
    )


Milestone = Callable[[str, dict[str, Any]], str | None]


def _scaled(kind: str) -> Milestone:
    def seen(event: str, obj: dict[str, Any]) -> str | None:
        return f"{kind} replicas=1" if (obj.get("spec") or {}).get("replicas") else None

    return seen


def _pod_milestone(event: str, obj: dict[str, Any]) -> str | None:
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    if ready:
        return "pod Ready"
    if status.get("podIP"):
        return "pod has an IP"
    if (obj.get("spec") or {}).get("nodeName"):
        return "pod scheduled"
    return "pod created" if event == "ADDED" else None


def _endpoints_milestone(event: str, obj: dict[str, Any]) -> str | None:
    subsets = obj.get("subsets") or ()
    if any(s.get("addresses") for s in subsets):
        return "endpoint ready"
    if any(s.get("notReadyAddresses") for s in subsets):
        return "endpoint not ready"
    return None


class Milestones:
    """When this process first saw each step of a cold start, by watching the API server."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        from kubernetes import client, config, watch

        from corral_operator import api as corral_api

        api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        custom = client.CustomObjectsApi(api)
        self._api = api
        self._watch = watch
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._stopped = threading.Event()
        crd = {
            "group": corral_api.GROUP,
            "version": corral_api.VERSION,
            "plural": corral_api.MODELSERVERS,
        }
        for lister, args, milestone in (
            (custom.list_namespaced_custom_object, crd, _scaled("ModelServer")),
            (apps.list_namespaced_deployment, {}, _scaled("Deployment")),
            (core.list_namespaced_pod, {}, _pod_milestone),
            (core.list_namespaced_endpoints, {}, _endpoints_milestone),
        ):
            threading.Thread(
                target=self._follow,
                args=(lister, {"namespace": namespace, **args}, milestone),
                daemon=True,
            ).start()

    def _follow(self, lister: Callable[..., Any], args: dict[str, Any], seen: Milestone) -> None:
        while not self._stopped.is_set():
            try:
                watcher = self._watch.Watch()  # type: ignore[no-untyped-call]
                for event in watcher.stream(lister, timeout_seconds=30, **args):  # type: ignore[no-untyped-call]
                    now = time.perf_counter()
                    obj = self._api.sanitize_for_serialization(event["object"])
                    name = seen(event["type"], obj)
                    with self._lock:
                        if name is not None and name not in self._seen:
                            self._seen[name] = now
            except Exception:  # a dropped watch only loses a milestone: watch again
                time.sleep(0.1)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def since(self, started: float) -> str:
        with self._lock:
            steps = sorted(self._seen.items(), key=lambda item: item[1])
        return ", ".join(f"{name} +{(at - started) * 1000:.0f}" for name, at in steps)

    def stop(self) -> None:
        self._stopped.set()


def scale_from_zero() -> dict[str, list[float]]:
    """Cold first-token time minus reported load time, in seconds, for each run: through the
    stack's gateway (``probing``: it probes a starting pod itself) and through a second gateway
    that waits for the cluster to mark the pod Ready (``waiting``), runs alternating."""
    from devstack.poll import wait_for
    from devstack.stack import Stack, free_node_port
    from tests.support.serveproc import gateway_process

    overheads: dict[str, list[float]] = {"probing": [], "waiting": []}
    wakes: dict[str, list[float]] = {"probing": [], "waiting": []}
    with (
        tempfile.TemporaryDirectory(prefix="corral-bench-") as state,
        contextlib.ExitStack() as processes,
    ):
        stack = Stack(Path(state))
        milestones: Milestones | None = None
        try:
            activity = {"CORRAL_GATEWAY_ACTIVITY_INTERVAL_SECONDS": "1"}
            extra_env = [{"name": k, "value": v} for k, v in activity.items()]
            stack.up(gateway_port=free_node_port(), values={"gateway": {"extraEnv": extra_env}})
            waiting = processes.enter_context(
                gateway_process(
                    {
                        **activity,
                        "CORRAL_GATEWAY_PROBE_STARTING_PODS": "false",
                        "CORRAL_GATEWAY_KUBECONFIG": str(stack.kubeconfig),
                    },
                    log=stack.logs / "waiting-gateway.log",
                )
            )
            gateways = {"probing": stack.gateway_url, "waiting": waiting.base_url}
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

            def listed(url: str) -> bool:
                tags = httpx.get(url + "/api/tags", timeout=5).json()["models"]
                return any(t["name"].startswith(model) for t in tags)

            for url in gateways.values():
                wait_for("the gateway to route the model", functools.partial(listed, url), 30)
            milestones = Milestones(stack.kubeconfig, COLD_NAMESPACE)
            with httpx.Client(timeout=300) as client:
                for run in range(COLD_RUNS):
                    for kind, url in gateways.items():
                        wait_for("the server at zero", no_pods, 120)
                        time.sleep(1)  # the last pod's deletion events are not this run's
                        milestones.reset()
                        started = time.perf_counter()
                        cold = first_token(client, url, model, started)
                        overheads[kind].append(cold.to_first - cold.load)
                        wakes[kind].append(cold.to_first - cold.load - cold.prompt_eval)
                        print(
                            f"cold run {run + 1} ({kind} gateway): first token "
                            f"{cold.to_first * 1000:.0f}ms, runtime load {cold.load * 1000:.0f}ms, "
                            f"prompt eval {cold.prompt_eval * 1000:.0f}ms; ms after the request: "
                            f"{milestones.since(started)}",
                            flush=True,
                        )
                        stack.kubectl(
                            "scale", "modelserver", server, "-n", COLD_NAMESPACE, "--replicas=0"
                        )
        finally:
            if milestones is not None:
                milestones.stop()
            processes.close()
            stack.down()
    # The first prompt evaluation of a fresh runtime swings with the machine's load (llama.cpp
    # threads compete for the cores); without it, what remains is the wake-up path itself.
    print(
        "cold first token minus load and prompt eval, median ms: "
        + ", ".join(f"{k} {statistics.median(v) * 1000:.0f}" for k, v in wakes.items())
    )
    return overheads


def serve_stub(port: int) -> None:
    """A stub runtime: answers every request at once with ``STUB_ANSWER`` (keep-alive HTTP/1.1),
    so that what a call through the gateway adds is the gateway's alone."""
    import asyncio

    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(STUB_ANSWER)}\r\n\r\n".encode()
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in request.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(head + STUB_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def proxy_overhead() -> tuple[float, float]:
    """p50 and p99 (ms) of what the gateway adds to a call to a stub runtime."""
    stub_port, gateway_port = free_port(), free_port()
    direct = f"http://127.0.0.1:{stub_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    gateway_env = {
        "CORRAL_GATEWAY_HOST": "127.0.0.1",
        "CORRAL_GATEWAY_PORT": str(gateway_port),
        "CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(
            {"stub": {"models": [MODEL], "endpoints": [f"127.0.0.1:{stub_port}"]}}
        ),
    }
    body = {"model": MODEL, "prompt": "Hi", "stream": False}
    with (
        process([sys.executable, __file__, "--stub-upstream", str(stub_port)], {}, direct + "/"),
        process([sys.executable, "-m", "corral_operator.gateway"], gateway_env, gateway + "/"),
        httpx.Client(timeout=30) as client,
    ):
        differences = []
        for round_ in range(PROXY_ROUNDS + 100):
            started = time.perf_counter()
            client.post(direct + "/api/generate", json=body).raise_for_status()
            middle = time.perf_counter()
            client.post(gateway + "/api/generate", json=body).raise_for_status()
            ended = time.perf_counter()
            if round_ >= 100:  # the first ones warm both connection pools
                differences.append((ended - middle) - (middle - started))
    return percentile(differences, 0.5) * 1000, percentile(differences, 0.99) * 1000


def server_stack() -> str:
    """The event loop and HTTP parser the gateway's uvicorn runs on in this environment (its
    ``__main__`` names them rather than leaving them to uvicorn's "auto")."""
    import importlib.util

    from corral_operator.gateway.__main__ import http_protocol

    protocol = http_protocol(importlib.util.find_spec("httptools") is not None)
    return f"asyncio+{protocol if isinstance(protocol, str) else protocol.__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cold", action="store_true", help="skip scale from zero")
    parser.add_argument("--stub-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub_upstream:
        serve_stub(args.stub_upstream)
        return
    p50, p99 = proxy_overhead()
    print(f"gateway server stack: {server_stack()}")
    print(f"gateway_proxy_overhead_p50_ms={p50:.3f}")
    print(f"gateway_proxy_overhead_p99_ms={p99:.3f}")
    warm()
    if args.no_cold:
        print("scale_from_zero_overhead_ms=nan")
        return
    overheads = scale_from_zero()
    waiting = statistics.median(overheads["waiting"]) * 1000
    print(f"scale_from_zero_overhead_ms_without_probing={waiting:.0f}")
    print(f"scale_from_zero_overhead_ms={statistics.median(overheads['probing']) * 1000:.0f}")


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

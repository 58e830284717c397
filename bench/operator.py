"""Operator benchmark on the local cluster (``devstack``: the control plane and a real node, as
root; started and stopped here).

The Model is pulled for real (a pull Job on the node copies the bundled GGUF into the cache
claim). Measures, with the real operator in a subprocess on this machine:
- the time from applying a ModelServer (with a Ready Model) to its Deployment existing,
  p50 and p99 over 50 servers applied one after another;
- the time to reconcile 100 ModelServers applied at once (all Deployments present and every
  server's ModelsReady condition True);
- the operator's resident memory afterwards.

Last line: ``apply_to_deployment_p50_ms=<x>`` (goal: at most 500).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.operator import Operator  # noqa: E402
from devstack.poll import wait_for  # noqa: E402
from devstack.stack import SAMPLE, Stack  # noqa: E402

SINGLE = 50
BULK = 100


def _server(name: str) -> dict[str, object]:
    return {
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {"models": ["gemma"], "minReplicas": 0},
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _model(name: str) -> dict[str, object]:
    """The sample's Model (the bundled GGUF from a claim), named ``name``."""
    docs = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    model = next(d for d in docs if d["kind"] == "Model")
    return {**model, "metadata": {"name": name}}


def run(stack: Stack, work: Path) -> float:
    kubeconfig = stack.kubeconfig
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    stack.kubectl("apply", "-f", str(ROOT / "crds"))
    for crd in ("models.corral.dev", "modelservers.corral.dev"):
        stack.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    wait_for(
        "the namespace's service account", lambda: stack.get("serviceaccount", "default", ns), 30
    )
    operator = Operator(kubeconfig, ns, work)
    operator.start()

    def create(plural: str, body: dict[str, object]) -> None:
        body = {"apiVersion": "corral.dev/v1alpha1", **body}
        custom.create_namespaced_custom_object("corral.dev", "v1alpha1", ns, plural, body)

    try:
        # A Model really pulled (a pull Job on the node copies the bundled GGUF into the cache).
        stack.seed(ns)
        create("models", _model("gemma"))
        stack.wait_ready("model", "gemma", ns, timeout=300)
        apps = client.AppsV1Api(api)
        latencies = []
        for i in range(SINGLE):
            name = f"single-{i}"
            stream = watch.Watch()
            started = time.perf_counter()
            create("modelservers", _server(name))
            for _ in stream.stream(
                apps.list_namespaced_deployment,
                ns,
                field_selector=f"metadata.name=corral-{name}",
                timeout_seconds=30,
            ):
                break
            latencies.append((time.perf_counter() - started) * 1000)
            stream.stop()
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"apply_to_deployment over {SINGLE}: p50={p50:.0f} ms p99={p99:.0f} ms")

        started = time.perf_counter()
        for i in range(BULK):
            create("modelservers", _server(f"bulk-{i}"))

        def all_reconciled() -> bool:
            items = custom.list_namespaced_custom_object(
                "corral.dev", "v1alpha1", ns, "modelservers"
            )["items"]
            done = [
                s
                for s in items
                if s["metadata"]["name"].startswith("bulk-")
                and any(
                    c["type"] == "ModelsReady" and c["status"] == "True"
                    for c in (s.get("status") or {}).get("conditions", ())
                )
            ]
            deployments = [
                d
                for d in apps.list_namespaced_deployment(ns).items
                if d.metadata.name.startswith("corral-bulk-")
            ]
            return len(done) == BULK and len(deployments) == BULK

        wait_for(f"{BULK} ModelServers reconciled", all_reconciled, 300)
        print(f"reconcile_{BULK}_modelservers_s={time.perf_counter() - started:.2f}")
        assert operator.proc is not None
        print(f"operator_rss_mib={_rss_mib(operator.proc.pid):.1f}")
    finally:
        operator.stop()
        core.delete_namespace(ns, propagation_policy="Background")
    return p50


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        work = Path(tmp)
        # The control plane and a real node, without the chart: the operator runs here.
        stack = Stack(work / "stack")
        stack.up(install=False)
        try:
            p50 = run(stack, work)
        finally:
            stack.down()
    print(f"apply_to_deployment_p50_ms={p50:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

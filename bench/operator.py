"""Operator benchmark on the real control plane (started and stopped here when none runs).

Measures, with the real operator in a subprocess:
- the time from applying a ModelServer (with a Ready Model) to its Deployment existing,
  p50 and p99 over 50 servers applied one after another;
- the time to reconcile 100 ModelServers applied at once (all Deployments present and every
  server's ModelsReady condition True);
- the operator's resident memory afterwards.

Last line: ``apply_to_deployment_p50_ms=<x>`` (goal: at most 500).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.controlplane import ControlPlane  # noqa: E402
from tests.cluster.operator.support import Cluster, Operator, wait_for  # noqa: E402

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


def run(kubeconfig: Path, work: Path) -> float:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    subprocess.run(
        [
            str(ROOT / ".tools/bin/kubectl"),
            f"--kubeconfig={kubeconfig}",
            "apply",
            "-f",
            str(ROOT / "crds"),
        ],
        check=True,
        capture_output=True,
    )
    time.sleep(2)  # let the new CRDs' endpoints settle
    cluster = Cluster(api, ns)
    operator = Operator(kubeconfig, ns, work)
    operator.start()
    try:
        cluster.ready_model("gemma")
        apps = client.AppsV1Api(api)
        latencies = []
        for i in range(SINGLE):
            name = f"single-{i}"
            stream = watch.Watch()
            started = time.perf_counter()
            cluster.create("modelservers", _server(name))
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
            cluster.create("modelservers", _server(f"bulk-{i}"))

        def all_reconciled() -> bool:
            items = cluster.custom.list_namespaced_custom_object(
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

        wait_for(all_reconciled, 300, f"{BULK} ModelServers reconciled")
        print(f"reconcile_{BULK}_modelservers_s={time.perf_counter() - started:.2f}")
        assert operator.proc is not None
        print(f"operator_rss_mib={_rss_mib(operator.proc.pid):.1f}")
    finally:
        operator.stop()
        core.delete_namespace(ns, propagation_policy="Background")
    return p50


def main() -> int:
    kubeconfig_env = os.environ.get("KUBECONFIG")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        work = Path(tmp)
        plane: ControlPlane | None = None
        running = ControlPlane(ROOT / ".cluster")  # `make cluster`
        if kubeconfig_env:
            kubeconfig = Path(kubeconfig_env)
        elif running.is_running():
            kubeconfig = running.kubeconfig
        else:
            plane = ControlPlane(work / "cluster")
            plane.start()
            kubeconfig = plane.kubeconfig
        try:
            p50 = run(kubeconfig, work)
        finally:
            if plane is not None:
                plane.stop()
    print(f"apply_to_deployment_p50_ms={p50:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

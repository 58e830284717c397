"""Where ``corral run`` sends requests: an explicit host, else corral's gateway in the cluster.

An explicit ``--host``, ``CORRAL_HOST`` or ``OLLAMA_HOST`` always wins. Otherwise the gateway
Service (labelled ``app.kubernetes.io/part-of=corral`` and ``app.kubernetes.io/component=gateway``
by the chart) is looked up in the install namespace and tried in order: its ClusterIP, then the
IPs of its ready pods from its Endpoints. The ClusterIP answers only where kube-proxy (or an
equivalent) routes Service IPs to this machine, i.e. inside the cluster's network; pod IPs answer
on flat networks without kube-proxy. From anywhere else, forward a port and pass ``--host``::

    kubectl -n corral-system port-forward svc/corral-gateway 11434:11434
    corral run gemma3:270m --host http://127.0.0.1:11434
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from corral_operator.cli.cluster import Cluster, ClusterError, ready_addresses
from corral_operator.cli.values import normalize_host
from corral_operator.settings import CliSettings

DEFAULT_GATEWAY_NAMESPACE = "corral-system"
GATEWAY_SELECTOR = "app.kubernetes.io/part-of=corral,app.kubernetes.io/component=gateway"
PROBE_TIMEOUT = 2.0


def explicit_host(flag: str | None, settings: CliSettings) -> str | None:
    """``--host`` unless blank, else the environment's host (CORRAL_HOST, OLLAMA_HOST),
    normalized; None: find the gateway."""
    raw = flag if flag and flag.strip() else settings.host
    return normalize_host(raw) if raw else None


def gateway_candidates(
    service: Mapping[str, Any], endpoints: Mapping[str, Any] | None
) -> list[str]:
    """Base URLs to try for one gateway Service: its ClusterIP first, then its ready pods."""
    spec = service.get("spec") or {}
    ports: Sequence[Mapping[str, Any]] = spec.get("ports") or ()
    http = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
    urls = []
    cluster_ip = spec.get("clusterIP")
    if http is not None and cluster_ip and cluster_ip != "None":
        urls.append(f"http://{cluster_ip}:{http['port']}")
    port_name = str(http["name"]) if http is not None and http.get("name") else None
    urls.extend(f"http://{address}" for address in ready_addresses(endpoints, port_name))
    return urls


def answers(url: str) -> bool:
    """Whether an Ollama-compatible server answers at ``url`` (GET /api/version)."""
    try:
        # Cluster addresses are never meant for an HTTP proxy from the environment.
        with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as http:
            return http.get(f"{url}/api/version").status_code == 200
    except httpx.HTTPError:
        return False


def find_gateway(cluster: Cluster, namespace: str, probe: Callable[[str], bool] = answers) -> str:
    """The first address of the gateway in ``namespace`` that answers."""
    services = cluster.services(namespace, GATEWAY_SELECTOR)
    if not services:
        raise ClusterError(
            f"no corral gateway Service in namespace {namespace!r} "
            "(install the chart there, pass --gateway-namespace, or pass --host)"
        )
    service = services[0]
    name = service["metadata"]["name"]
    tried = gateway_candidates(service, cluster.endpoints(namespace, name))
    for url in tried:
        if probe(url):
            return url
    hint = (
        f"kubectl -n {namespace} port-forward svc/{name} 11434:11434, "
        "then pass --host http://127.0.0.1:11434"
    )
    if not tried:
        raise ClusterError(f"the gateway {namespace}/{name} has no ready pod; or use {hint}")
    raise ClusterError(
        f"the gateway {namespace}/{name} is not reachable from here (tried {', '.join(tried)}): "
        f"{hint}"
    )

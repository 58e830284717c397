"""Where ``corral run``, ``ps`` and ``stop`` send requests: one rule, ``choose_server``.

An explicit ``--host``, ``CORRAL_HOST`` or ``OLLAMA_HOST`` always wins; then a cluster flag means
the cluster's gateway; then a server at Ollama's default address; then any kubeconfig that loads.
So ``corral run`` works like ``ollama run`` next to ``corral serve`` (or Ollama itself) and like a
cluster client where only a kubeconfig is set up. For the cluster, the gateway
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
from dataclasses import dataclass
from typing import Any

import httpx

from corral_operator.cli.cluster import Cluster, ClusterError, CommandError, ready_addresses
from corral_operator.cli.values import normalize_host
from corral_operator.settings import CliSettings, KubeClientSettings

DEFAULT_GATEWAY_NAMESPACE = "corral-system"
GATEWAY_SELECTOR = "app.kubernetes.io/part-of=corral,app.kubernetes.io/component=gateway"
PROBE_TIMEOUT = 2.0
# Ollama's default address; a server there answers /api/version at once or is not there.
LOCAL_SERVER = "http://127.0.0.1:11434"
LOCAL_PROBE_TIMEOUT = 0.5
NO_SERVER = (
    "no server at 127.0.0.1:11434 and no cluster configured: start one with `corral serve`, "
    "set OLLAMA_HOST, or pass --host"
)


@dataclass(frozen=True, slots=True)
class ServerChoice:
    """Where requests go: ``url``, or (None) the cluster's gateway, still to be found."""

    url: str | None = None

    @property
    def gateway(self) -> bool:
        """Whether the cluster's gateway was chosen: a model it does not know is not deployed
        (``corral deploy``), where a local server would pull it."""
        return self.url is None


def choose_server(
    host_flag: str | None,
    settings: CliSettings,
    *,
    cluster_flags: bool,
    local_answers: Callable[[], bool],
    kubeconfig_loads: Callable[[], bool],
) -> ServerChoice:
    """The one rule: ``--host``/CORRAL_HOST/OLLAMA_HOST, else the gateway if any cluster flag
    was given, else a server answering at 127.0.0.1:11434, else the gateway if a kubeconfig
    loads. The two probes are called only when the rule reaches them (in that order), so an
    explicit choice costs no connection. Raises CommandError when nothing is there."""
    explicit = explicit_host(host_flag, settings)
    if explicit is not None:
        return ServerChoice(explicit)
    if cluster_flags:
        return ServerChoice()
    if local_answers():
        return ServerChoice(LOCAL_SERVER)
    if kubeconfig_loads():
        return ServerChoice()
    raise CommandError(NO_SERVER)


def explicit_host(flag: str | None, settings: CliSettings) -> str | None:
    """``--host`` unless blank, else the environment's host (CORRAL_HOST, OLLAMA_HOST),
    normalized; None: find the gateway."""
    raw = flag if flag and flag.strip() else settings.host
    if raw and raw.strip().startswith(":"):
        raw = f"127.0.0.1{raw.strip()}"  # Ollama's ``:port``: its default host, that port
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


def answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether an Ollama-compatible server answers at ``url`` (GET /api/version)."""
    try:
        # Cluster and loopback addresses are never meant for an HTTP proxy from the environment.
        with httpx.Client(timeout=timeout, trust_env=False) as http:
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


def locate_server(
    choice: ServerChoice, connect: Callable[[], Cluster], gateway_namespace: str | None
) -> str:
    """The base URL of ``choice``: its own, or the gateway found through ``connect``'s
    cluster in ``gateway_namespace`` (default corral-system)."""
    if choice.url is not None:
        return choice.url
    cluster = connect()
    try:
        return find_gateway(cluster, gateway_namespace or DEFAULT_GATEWAY_NAMESPACE)
    finally:
        cluster.close()


def kubeconfig_loads(connect: Callable[[], Cluster]) -> bool:
    """Whether a cluster is configured here: ``connect`` loads a kubeconfig (or the pod's
    service account) without calling the API server."""
    try:
        connect().close()
    except ClusterError:
        return False
    return True


def _connector(
    kubeconfig: str | None, context: str | None, namespace: str | None
) -> Callable[[], Cluster]:
    def connect() -> Cluster:
        return Cluster.connect(KubeClientSettings(), kubeconfig, context, namespace)

    return connect


def server_choice(
    host_flag: str | None,
    settings: CliSettings,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    gateway_namespace: str | None = None,
) -> ServerChoice:
    """``choose_server`` over a command's flags: any cluster flag given counts, even one equal
    to its default."""
    return choose_server(
        host_flag,
        settings,
        cluster_flags=any(
            flag is not None for flag in (kubeconfig, context, namespace, gateway_namespace)
        ),
        local_answers=lambda: answers(LOCAL_SERVER, LOCAL_PROBE_TIMEOUT),
        kubeconfig_loads=lambda: kubeconfig_loads(_connector(kubeconfig, context, namespace)),
    )


def find_server(
    host_flag: str | None,
    settings: CliSettings,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespace: str | None = None,
    gateway_namespace: str | None = None,
) -> tuple[ServerChoice, str]:
    """``server_choice``, then its base URL (the gateway's, found in the cluster, where the
    gateway is chosen). ``gateway_namespace`` is the flag's value; CORRAL_GATEWAY_NAMESPACE only
    says where to look once the gateway is chosen."""
    choice = server_choice(
        host_flag,
        settings,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        gateway_namespace=gateway_namespace,
    )
    connect = _connector(kubeconfig, context, namespace)
    return choice, locate_server(choice, connect, gateway_namespace or settings.gateway_namespace)

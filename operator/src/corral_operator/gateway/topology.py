"""The routing table: which server serves each model name, and which of its pods are ready.

Built, purely, from the cluster's ModelServers, Models and the Endpoints of the runtime Services
(as plain dicts, the way the API returns them); rebuilt whenever one of them changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral_operator import api
from corral_operator.gateway.affinity import CACHE_AWARE, STRATEGIES
from corral_operator.gateway.priority import PriorityConfig, priority_config
from corral_operator.gateway.protocol import normalize_model_name

ServerKey = tuple[str, str]
"""(namespace, name) of a ModelServer."""


@dataclass(frozen=True, slots=True)
class ServerView:
    key: ServerKey
    endpoints: tuple[str, ...] = ()
    """``host:port`` of each ready pod."""
    starting: tuple[str, ...] = ()
    """``host:port`` of pods that have an address but are not Ready (yet): a gateway holding
    requests may probe them itself rather than wait for the readiness round-trip."""
    desired: int = 0
    """Replicas asked for (``spec.replicas``, else minReplicas); 0 means scaled (or scaling)
    to zero, and its pods take no new requests."""
    min_replicas: int = 0
    max_replicas: int = 1
    keep_alive_seconds: int = api.DEFAULT_KEEP_ALIVE_SECONDS
    max_keep_alive_seconds: float | None = api.DEFAULT_MAX_KEEP_ALIVE_SECONDS
    """How long after its last request a request's keep_alive may keep the server up (None:
    no bound); ``spec.maxKeepAliveSeconds``."""
    status_message: str = ""
    """Why the server is not Ready, when it is not (for the errors of held requests)."""
    scalable: bool = True
    routing: str = CACHE_AWARE
    """How a request picks among the ready pods (``spec.routing.strategy``): CacheAware or
    LeastInFlight."""
    priority: PriorityConfig = field(default_factory=PriorityConfig)
    """``spec.priority``: the classes of API keys, the default class, the aging."""

    @property
    def serving(self) -> tuple[str, ...]:
        """Pods that may take new requests: none while the server is being scaled down."""
        return self.endpoints if self.desired > 0 else ()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    """The served name, as clients write it (``gemma3:270m``)."""
    server: ServerKey
    ready: bool
    status: Mapping[str, Any] = field(default_factory=dict)
    """The Model's status (digest, size, family, …) for /api/tags."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    servers: Mapping[ServerKey, ServerView] = field(default_factory=dict)
    routes: Mapping[str, tuple[ModelEntry, ...]] = field(default_factory=dict)
    """Normalized model name -> the entries that serve it."""

    def lookup(self, model: str) -> tuple[ModelEntry, ...]:
        return self.routes.get(normalize_model_name(model), ())

    def listed(self) -> list[ModelEntry]:
        """Ready models, one entry per served name, in name order."""
        seen: dict[str, ModelEntry] = {}
        for entries in self.routes.values():
            for entry in entries:
                if entry.ready:
                    seen.setdefault(entry.name, entry)
        return [seen[n] for n in sorted(seen)]


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_ready(obj: Mapping[str, Any]) -> bool:
    cond = _condition(obj.get("status") or {}, "Ready")
    return cond is not None and cond.get("status") == "True"


def ready_addresses(
    endpoints: Mapping[str, Any] | None, field: str = "addresses"
) -> tuple[str, ...]:
    """``ip:port`` of the ready addresses of an Endpoints object (``notReadyAddresses``: of the
    pods that are not ready)."""
    found: list[str] = []
    for subset in (endpoints or {}).get("subsets") or ():
        ports = subset.get("ports") or ()
        port = next(
            (p["port"] for p in ports if p.get("port") == api.RUNTIME_PORT),
            ports[0]["port"] if ports else api.RUNTIME_PORT,
        )
        for address in subset.get(field) or ():
            found.append(f"{address['ip']}:{port}")
    return tuple(sorted(found))


def routing_strategy(spec: Mapping[str, Any]) -> str:
    """``spec.routing.strategy``, CacheAware when unset (or unknown: the CRD allows no other)."""
    strategy = (spec.get("routing") or {}).get("strategy")
    return strategy if strategy in STRATEGIES else CACHE_AWARE


def server_view(
    server: Mapping[str, Any], endpoints: Mapping[str, Any] | None, scalable: bool = True
) -> ServerView:
    meta, spec = server["metadata"], server.get("spec") or {}
    status = server.get("status") or {}
    low = int(spec.get("minReplicas", 0))
    requested = spec.get("replicas")
    ready = _condition(status, "Ready")
    message = "" if ready is None or ready.get("status") == "True" else ready.get("message", "")
    return ServerView(
        key=(meta["namespace"], meta["name"]),
        endpoints=ready_addresses(endpoints),
        starting=ready_addresses(endpoints, "notReadyAddresses"),
        desired=low if requested is None else int(requested),
        min_replicas=low,
        max_replicas=int(spec.get("maxReplicas", 1)),
        keep_alive_seconds=int(spec.get("keepAliveSeconds", api.DEFAULT_KEEP_ALIVE_SECONDS)),
        max_keep_alive_seconds=api.max_keep_alive(spec),
        status_message=str(message or ""),
        scalable=scalable,
        routing=routing_strategy(spec),
        priority=priority_config(spec),
    )


def build_snapshot(
    servers: Iterable[Mapping[str, Any]],
    models: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Mapping[str, Any]],
) -> Snapshot:
    """The routing table of the cluster as the three lists describe it."""
    model_by_key = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in models}
    endpoints_by_key = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    views: dict[ServerKey, ServerView] = {}
    routes: dict[str, list[ModelEntry]] = {}
    for server in sorted(
        servers, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])
    ):
        meta = server["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        namespace = meta["namespace"]
        service = api.server_child_name(meta["name"])
        view = server_view(server, endpoints_by_key.get((namespace, service)))
        views[view.key] = view
        served = {
            m.get("model"): m.get("name") for m in (server.get("status") or {}).get("models") or ()
        }
        for model_name in dict.fromkeys((server.get("spec") or {}).get("models") or ()):
            model = model_by_key.get((namespace, model_name))
            model_status: Mapping[str, Any] = (model or {}).get("status") or {}
            name = str(served.get(model_name) or model_status.get("name") or model_name)
            entry = ModelEntry(
                name=name,
                server=view.key,
                ready=model is not None and is_ready(model),
                status=model_status,
            )
            # The Model's own (DNS) name routes too, so ``gemma3-270m`` reaches ``gemma3:270m``.
            for alias in dict.fromkeys(
                (normalize_model_name(name), normalize_model_name(model_name))
            ):
                routes.setdefault(alias, []).append(entry)
    return Snapshot(servers=views, routes={k: tuple(v) for k, v in routes.items()})


def static_snapshot(
    servers: Mapping[str, tuple[Iterable[str], Iterable[str]]],
    routing: Mapping[str, str] | None = None,
) -> Snapshot:
    """A fixed table for a gateway without Kubernetes: server name -> (model names, endpoints),
    and each server's routing strategy (CacheAware where ``routing`` names none). Such servers
    cannot be scaled; their endpoints are always taken as ready."""
    views: dict[ServerKey, ServerView] = {}
    routes: dict[str, list[ModelEntry]] = {}
    for name, (model_names, addresses) in sorted(servers.items()):
        key: ServerKey = ("", name)
        endpoints = tuple(addresses)
        views[key] = ServerView(
            key=key,
            endpoints=endpoints,
            desired=len(endpoints),
            min_replicas=len(endpoints),
            max_replicas=max(1, len(endpoints)),
            scalable=False,
            routing=(routing or {}).get(name, CACHE_AWARE),
        )
        for model_name in model_names:
            entry = ModelEntry(name=model_name, server=key, ready=True)
            routes.setdefault(normalize_model_name(model_name), []).append(entry)
    return Snapshot(servers=views, routes={k: tuple(v) for k, v in routes.items()})

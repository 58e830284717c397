"""The kopf entry point: decorators only, each delegating to a handler module.

Reconciliation is level-based: every trigger (a Model or ModelServer changing, a child
Deployment, Service or Job changing or vanishing, the operator resuming, the periodic resync)
runs the same reconcile function, which reads the current state and converges it.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

import kopf
from kopf._core.engines.peering import Identity

from corral_operator import api
from corral_operator.handlers import keepalive, models, modelservers, nodes, startup
from corral_operator.handlers.context import Context
from corral_operator.planners.model import is_pulling
from corral_operator.planners.nodes import sized_from_nodes
from corral_operator.settings import OperatorSettings

MANAGED = {api.LABEL_MANAGED_BY: api.MANAGED_BY}
# Read once, at import: timer intervals are fixed when the handlers are registered; start-up and
# main() use the same object.
SETTINGS = OperatorSettings()


def _ctx(memo: Any) -> Context:
    context: Context = memo.context
    return context


def _ns(namespace: str | None) -> str:
    # Every corral resource and child is namespaced; kopf types the argument for all kinds.
    assert namespace is not None
    return namespace


@kopf.on.startup()
def on_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    startup.start(settings, memo, SETTINGS)


# -- Model ---------------------------------------------------------------------------------------


@kopf.on.resume(api.GROUP, api.VERSION, api.MODELS)
@kopf.on.create(api.GROUP, api.VERSION, api.MODELS)
@kopf.on.update(api.GROUP, api.VERSION, api.MODELS)
def on_model(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    models.reconcile_model(_ctx(memo), _ns(namespace), name, logger)


@kopf.on.delete(api.GROUP, api.VERSION, api.MODELS)
def on_model_delete(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    models.collect_model(_ctx(memo), dict(body), logger)


@kopf.on.event("batch", "v1", "jobs", labels={**MANAGED, api.LABEL_COMPONENT: "pull"})
def on_pull_job(
    namespace: str | None, labels: kopf.Labels, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    model = models.model_of(labels)
    if model:
        models.reconcile_model(_ctx(memo), _ns(namespace), model, logger)


def _pulling(status: kopf.Status, **_: Any) -> bool:
    return is_pulling(status)


# Nothing but the pull pod's log changes while bytes arrive: look at it now and then. The timer
# runs only while a Model pulls (kopf stops it when the filter no longer matches).
@kopf.timer(
    api.GROUP, api.VERSION, api.MODELS, interval=SETTINGS.pull_progress_seconds, when=_pulling
)
def on_pull_progress(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    models.reconcile_model(_ctx(memo), _ns(namespace), name, logger)


@kopf.on.event(api.GROUP, api.VERSION, api.MODELS)
def on_model_event(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    # A Model becoming Ready (or going away) changes what its ModelServers can do.
    ctx = _ctx(memo)
    for server in modelservers.servers_using(ctx, _ns(namespace), name):
        modelservers.reconcile_modelserver(ctx, _ns(namespace), server, logger)


# -- ModelServer ---------------------------------------------------------------------------------


@kopf.on.resume(api.GROUP, api.VERSION, api.MODELSERVERS)
@kopf.on.create(api.GROUP, api.VERSION, api.MODELSERVERS)
@kopf.on.update(api.GROUP, api.VERSION, api.MODELSERVERS)
def on_modelserver(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    modelservers.reconcile_modelserver(_ctx(memo), _ns(namespace), name, logger)


@kopf.on.event("apps", "v1", "deployments", labels={**MANAGED, api.LABEL_COMPONENT: "runtime"})
@kopf.on.event("", "v1", "services", labels={**MANAGED, api.LABEL_COMPONENT: "runtime"})
def on_runtime_child(
    namespace: str | None, labels: kopf.Labels, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    # Drift repair and status: any change to (or deletion of) a child re-converges its parent.
    server = modelservers.server_of(labels)
    if server:
        modelservers.reconcile_modelserver(_ctx(memo), _ns(namespace), server, logger)


@kopf.timer(api.GROUP, api.VERSION, api.MODELSERVERS, interval=SETTINGS.keep_alive_check_seconds)
def on_keep_alive(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    keepalive.tick(_ctx(memo), _ns(namespace), name, datetime.now(UTC), logger)


# -- Nodes ---------------------------------------------------------------------------------------


def _sized_from_nodes(body: kopf.Body, **_: Any) -> bool:
    return sized_from_nodes(body)


# The servers a node change can re-size, kept current by kopf's own ModelServer watch (a server
# that stops matching leaves the index), so a node event lists nothing.
@kopf.index(api.GROUP, api.VERSION, api.MODELSERVERS, when=_sized_from_nodes)
def node_sized_servers(namespace: str | None, name: str, **_: Any) -> tuple[str, str]:
    return _ns(namespace), name


# An event handler, not create/update/delete ones: those would write kopf's annotations and a
# finalizer on every node, and the operator may only read nodes.
@kopf.on.event("", "v1", "nodes")
def on_node(type: str, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    # kopf passes each index by its function's name (its handler protocols do not name them).
    index: kopf.Index[None, tuple[str, str]] = kwargs["node_sized_servers"]
    servers = list(index[None]) if None in index else []
    # A listing's events have no type (kopf types it as a string all the same).
    nodes.on_node_event(_ctx(memo), type or None, body, servers, logger)


# -- periodic resync ------------------------------------------------------------------------------


def on_model_resync(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    # What no event reports (a deleted cache claim, a missed event) converges within a period.
    models.reconcile_model(_ctx(memo), _ns(namespace), name, logger)


def on_modelserver_resync(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    modelservers.reconcile_modelserver(_ctx(memo), _ns(namespace), name, logger)


if SETTINGS.resync_seconds > 0:
    for _plural, _resync in (
        (api.MODELS, on_model_resync),
        (api.MODELSERVERS, on_modelserver_resync),
    ):
        kopf.timer(
            api.GROUP,
            api.VERSION,
            _plural,
            interval=SETTINGS.resync_seconds,
            initial_delay=SETTINGS.resync_seconds,
        )(_resync)


def identity(hostname: str, pid: int) -> str:
    """The operator's identity among kopf peers: the pod's name (its hostname) and the process.
    kopf's own default asks the password database for the user's name, which a container running
    as an arbitrary uid (runAsUser 65532, OpenShift's random uids) does not have."""
    return f"corral-operator@{hostname}/{pid}"


def main() -> None:
    """``corral-operator``: run the operator on the namespaces from the settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kopf.run(
        standalone=True,
        identity=Identity(identity(socket.gethostname(), os.getpid())),
        clusterwide=not SETTINGS.namespaces,
        namespaces=SETTINGS.namespaces,
        liveness_endpoint=SETTINGS.liveness_endpoint,
    )


if __name__ == "__main__":
    main()

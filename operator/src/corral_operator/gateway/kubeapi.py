"""The few ModelServer writes the gateway and the keep-alive make, as raw requests with the exact
patch content type (the generated client would pick JSON Patch for a merge patch).

- ``set_last_request_time``: merge-patch ``status.lastRequestTime``;
- ``scale_replicas`` / ``read_scale``: the ``scale`` subresource (``spec.replicas``);
- ``set_annotations``: merge-patch annotations (None removes one).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from kubernetes import client as k8s

from corral_operator import api
from corral_operator.api import parse_time, rfc3339
from corral_operator.kube import request

MERGE_PATCH = "application/merge-patch+json"

__all__ = ["MERGE_PATCH", "parse_time", "request", "rfc3339"]


def server_path(namespace: str, name: str) -> str:
    return f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.MODELSERVERS}/{name}"


def set_last_request_time(
    client: k8s.ApiClient, namespace: str, name: str, moment: datetime
) -> None:
    request(
        client,
        "PATCH",
        server_path(namespace, name) + "/status",
        {"status": {"lastRequestTime": rfc3339(moment)}},
        MERGE_PATCH,
    )


def read_replicas(client: k8s.ApiClient, namespace: str, name: str) -> int | None:
    """``spec.replicas`` of a ModelServer (None while unset). Read from the object itself: the
    scale subresource of a custom resource fails (500) while its replicas field is unset."""
    server = request(client, "GET", server_path(namespace, name))
    replicas = (server.get("spec") or {}).get("replicas")
    return None if replicas is None else int(replicas)


def scale_replicas(
    client: k8s.ApiClient, namespace: str, name: str, replicas: int, *, unset: bool = False
) -> None:
    """Set ``spec.replicas`` through the scale subresource; a server whose field is still
    ``unset`` gets it through a patch of the object (its scale subresource cannot answer)."""
    path = server_path(namespace, name) + ("" if unset else "/scale")
    request(client, "PATCH", path, {"spec": {"replicas": replicas}}, MERGE_PATCH)


def set_annotations(
    client: k8s.ApiClient, namespace: str, name: str, annotations: Mapping[str, str | None]
) -> None:
    request(
        client,
        "PATCH",
        server_path(namespace, name),
        {"metadata": {"annotations": dict(annotations)}},
        MERGE_PATCH,
    )

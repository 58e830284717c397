"""The few ModelServer writes the gateway and the keep-alive make, as raw requests with the exact
patch content type (the generated client would pick JSON Patch for a merge patch).

- ``set_last_request_time``: merge-patch ``status.lastRequestTime``;
- ``scale_replicas`` / ``read_scale``: the ``scale`` subresource (``spec.replicas``);
- ``set_annotations``: merge-patch annotations (None removes one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from corral_operator import api

MERGE_PATCH = "application/merge-patch+json"


def server_path(namespace: str, name: str) -> str:
    return f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.MODELSERVERS}/{name}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: object) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def request(
    client: k8s.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    method_, url, headers, payload, _ = client.param_serialize(
        method,
        path,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(method_, url, header_params=headers, body=payload)
    data = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data)
    return cast(dict[str, Any], json.loads(data)) if data else {}


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

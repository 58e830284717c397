"""The one write path of the controller and the gateway: server-side apply with the
``corral-operator`` field manager for the objects the controller owns, merge patches for the
status and the few fields other writers share (a ModelServer's ``spec.replicas``, activity
annotations, ``status.lastRequestTime``).

A thin, synchronous layer over the ``kubernetes`` client's ApiClient (kopf runs synchronous
handlers in its thread pool, the gateway writes from worker threads). Objects are plain dicts,
as the builders return them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from corral_operator import api

MERGE_PATCH = "application/merge-patch+json"
# A log read must not hold a handler thread for long: a kubelet that does not answer is skipped.
LOG_TIMEOUT_SECONDS = 10.0
_PLURALS = {
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "NetworkPolicy": "networkpolicies",
    "Pod": "pods",
    "Deployment": "deployments",
    "Job": "jobs",
    "Model": api.MODELS,
    "ModelServer": api.MODELSERVERS,
    "Event": "events",
}
_API_VERSIONS = {
    "PersistentVolumeClaim": "v1",
    "Service": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Pod": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "Model": api.API_VERSION,
    "ModelServer": api.API_VERSION,
    "Event": "v1",
}
# What kubectl describe shows of a message is a line; the API server refuses more than 1 KiB.
EVENT_MESSAGE_LIMIT = 1024


def namespace_terminating(error: ApiException) -> bool:
    """Whether the API server refused a create because the namespace is being deleted (403 with
    the cause NamespaceTerminating): nothing new can live there any more."""
    if error.status != 403:
        return False
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return False
    causes = (body.get("details") or {}).get("causes") or () if isinstance(body, dict) else ()
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


def api_version(kind: str) -> str:
    """The apiVersion the operator reads and writes ``kind`` in."""
    return _API_VERSIONS[kind]


def resource_path(kind: str, namespace: str, name: str | None = None) -> str:
    version = api_version(kind)
    prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer: its status code, body and the server's clock (its Date header)."""

    status: int
    data: bytes
    date: datetime | None


@dataclass(frozen=True, slots=True)
class Applied:
    """What the API server answered to a server-side apply, as far as it tells what changed."""

    created: bool
    """201 Created: there was no such object."""
    resource_version: str | None
    ours: Mapping[str, Any] | None
    """Our field manager's ``managedFields`` entry: the fields we own and ``time``, when our
    applies last changed them (the server rewrites it only then)."""
    server_time: datetime | None


def event_body(
    obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A ``v1`` Event about ``obj`` (the kind ``kubectl describe`` lists under Events, and the
    one kopf posts too), from the operator, at ``now``."""
    meta = obj["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion") or api_version(obj["kind"]),
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "source": {"component": api.FIELD_MANAGER},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _http_date(raw: str | None) -> datetime | None:
    try:
        return parsedate_to_datetime(raw) if raw else None
    except (TypeError, ValueError):
        return None


def send(
    client: k8s.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    *,
    query: list[tuple[str, str]] | None = None,
    timeout: float | None = None,
    accept: str = "application/json",
) -> Answer:
    """One raw API call with an exact content type (the generated client would pick JSON Patch
    for a merge patch, and has no server-side apply); ApiException unless it succeeded."""
    method_, url, headers, payload, _ = client.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(
        method_, url, header_params=headers, body=payload, _request_timeout=timeout
    )
    data = cast(bytes, response.read())  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException(
            status=response.status, reason=response.reason, body=data.decode(errors="replace")
        )
    date = response.getheader("Date")  # type: ignore[no-untyped-call]
    return Answer(response.status, data, _http_date(date))


def request(
    client: k8s.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    *,
    query: list[tuple[str, str]] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """``send`` for a JSON answer (empty answers read as ``{}``)."""
    data = send(client, method, path, body, content_type, query=query, timeout=timeout).data
    return cast(dict[str, Any], json.loads(data)) if data else {}


class Kube:
    """The API calls the handlers make; every write is idempotent."""

    def __init__(self, client: k8s.ApiClient) -> None:
        self.client = client

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        return request(self.client, method, path, body, content_type, query=query)

    def apply(self, obj: Mapping[str, Any]) -> Applied:
        """Server-side apply: create or converge ``obj``; fields we stop setting are dropped."""
        meta = obj["metadata"]
        answer = send(
            self.client,
            "PATCH",
            resource_path(obj["kind"], meta["namespace"], meta["name"]),
            obj,
            "application/apply-patch+yaml",
            query=[("fieldManager", api.FIELD_MANAGER), ("force", "true")],
        )
        stored = json.loads(answer.data).get("metadata") or {}
        ours = next(
            (
                entry
                for entry in stored.get("managedFields") or ()
                if entry.get("manager") == api.FIELD_MANAGER and entry.get("operation") == "Apply"
            ),
            None,
        )
        return Applied(
            created=answer.status == 201,
            resource_version=stored.get("resourceVersion"),
            ours=ours,
            server_time=answer.date,
        )

    def post_event(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
    ) -> None:
        """Create an Event about ``obj``: the one way the operator tells ``kubectl describe``
        what happened to it."""
        namespace = obj["metadata"]["namespace"]
        self._call(
            "POST",
            resource_path("Event", namespace),
            body=event_body(obj, type_, reason, message, now),
        )

    def list_nodes(self) -> list[dict[str, Any]] | None:
        """The cluster's nodes (what sizing places GPU servers on); None where the operator may
        not list them (403): a server is then sized without knowing the GPUs there are."""
        try:
            return list(self._call("GET", "/api/v1/nodes").get("items") or [])
        except ApiException as exc:
            if exc.status == 403:
                return None
            raise

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", resource_path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        items = self._call("GET", resource_path(kind, namespace), query=query).get("items") or []
        return [dict(item, kind=kind) for item in items]

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go with it); gone is fine. Whether
        this call deleted it (False: it was gone already)."""
        try:
            self._call(
                "DELETE",
                resource_path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    def log_tail(
        self, namespace: str, pod: str, container: str, *, lines: int, limit_bytes: int
    ) -> str:
        """The last ``lines`` lines of a container's log (at most ``limit_bytes``), through the
        API server's ``pods/log``, which asks the pod's kubelet."""
        answer = send(
            self.client,
            "GET",
            resource_path("Pod", namespace, pod) + "/log",
            query=[
                ("container", container),
                ("tailLines", str(lines)),
                ("limitBytes", str(limit_bytes)),
            ],
            # The API server answers text/plain, yet refuses that in Accept (406), as kubectl
            # knows: it asks for JSON or anything.
            accept="application/json, */*",
            timeout=LOG_TIMEOUT_SECONDS,
        )
        return answer.data.decode(errors="replace")

    def merge_patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386: None removes a key) of an object or one of its
        subresources, for fields other writers share, which server-side apply would take over.
        ApiException (404 included) unless it succeeded."""
        path = resource_path(kind, namespace, name)
        return self._call(
            "PATCH",
            f"{path}/{subresource}" if subresource else path,
            body=dict(patch),
            content_type=MERGE_PATCH,
        )

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (only the fields that changed are sent)."""
        try:
            self.merge_patch(kind, namespace, name, {"status": dict(status)}, "status")
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing left to describe
                raise

    def annotate(
        self, kind: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch annotations (None removes one)."""
        self.merge_patch(kind, namespace, name, {"metadata": {"annotations": dict(annotations)}})

    def read_replicas(self, kind: str, namespace: str, name: str) -> int | None:
        """``spec.replicas`` (None while unset). Read from the object itself: the scale
        subresource of a custom resource fails (500) while its replicas field is unset."""
        found = self._call("GET", resource_path(kind, namespace, name))
        replicas = (found.get("spec") or {}).get("replicas")
        return None if replicas is None else int(replicas)

    def scale(
        self, kind: str, namespace: str, name: str, replicas: int, *, unset: bool = False
    ) -> None:
        """Set ``spec.replicas`` through the scale subresource; an object whose field is still
        ``unset`` gets it through a patch of the object (its scale subresource cannot answer)."""
        self.merge_patch(
            kind, namespace, name, {"spec": {"replicas": replicas}}, None if unset else "scale"
        )

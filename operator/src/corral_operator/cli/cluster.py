"""The cluster side of the CLI: finding a kubeconfig, the few API calls the commands make, and
errors that read as one line.

Configuration comes from ``--kubeconfig``, else ``KUBECONFIG``, else ``~/.kube/config``, else
the pod's service account when run inside a cluster. Calls are short (a 10-second timeout, no
retries) so that an unreachable cluster is reported at once rather than after minutes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from corral_operator import api
from corral_operator.settings import KubeClientSettings

FIELD_MANAGER = "corral-cli"
REQUEST_TIMEOUT = 10.0
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class CommandError(Exception):
    """Something the user must fix; the message is one line, printed without a traceback."""


class ClusterError(CommandError):
    """The cluster is not configured, not reachable, or refused a call."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    obj: dict[str, Any]
    action: str
    """``created``, ``configured`` or ``unchanged`` (as kubectl says it)."""


def _kubeconfig_files(explicit: str | None, kube: KubeClientSettings) -> list[str]:
    if explicit:
        return [explicit]
    if kube.kubeconfig:
        return kube.kubeconfig_paths
    default = Path("~/.kube/config").expanduser()
    return [str(default)] if default.exists() else []


class Cluster:
    """An API client plus the namespace the commands work in."""

    def __init__(self, client: Any, namespace: str, server: str) -> None:
        self.client, self.namespace, self.server = client, namespace, server

    @classmethod
    def connect(
        cls,
        kube: KubeClientSettings,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> Cluster:
        """Connect as ``kubeconfig`` (the flag), else as ``kube`` (the environment) says."""
        # Imported here: the kubernetes client is slow to import and `corral --help` should not
        # pay for it.
        from kubernetes import client, config

        configuration = client.Configuration()
        files = _kubeconfig_files(kubeconfig, kube)
        default_namespace = "default"
        try:
            if files:
                missing = [f for f in files if not Path(f).expanduser().exists()]
                if missing and len(missing) == len(files):
                    raise ClusterError(f"kubeconfig {', '.join(missing)} does not exist")
                config_file = files[0] if len(files) == 1 else os.pathsep.join(files)
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=config_file,
                    context=context,
                    client_configuration=configuration,
                )
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=config_file
                )
                chosen = next((c for c in contexts if c.get("name") == context), active)
                default_namespace = (chosen or {}).get("context", {}).get(
                    "namespace"
                ) or default_namespace
            elif kube.in_pod:
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
                if _SERVICE_ACCOUNT_NAMESPACE.exists():
                    default_namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
            else:
                raise ClusterError(
                    "no cluster configured: no kubeconfig found "
                    "(pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config)"
                )
        except ClusterError:
            raise
        except Exception as exc:
            # ConfigException, YAML errors, unreadable files and kubeconfigs of the wrong shape
            # (the loader then fails with KeyError or TypeError) all mean the same to the user.
            raise ClusterError(f"cannot load the kubeconfig: {_first_line(exc)}") from None
        # One try per call: a cluster that does not answer is reported, not retried for minutes.
        configuration.retries = 0
        return cls(
            client.ApiClient(configuration), namespace or default_namespace, configuration.host
        )

    def close(self) -> None:
        self.client.close()

    # -- raw calls --------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; None for 404, ClusterError for anything else that is not a success."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        from corral_operator.kube import request

        try:
            return request(
                self.client, method, path, body, content_type, query=query, timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterError(_api_error(method, path, exc.status, exc.body or b"")) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(
                f"cannot reach the Kubernetes API at {self.server}: {_reason(exc)}"
            ) from None

    # -- what the commands need -------------------------------------------------------------

    def corral_path(self, plural: str, name: str | None = None) -> str:
        path = f"/apis/{api.API_VERSION}/namespaces/{self.namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def list_corral(self, plural: str) -> list[dict[str, Any]]:
        result = self.call("GET", self.corral_path(plural))
        if result is None:
            raise ClusterError(
                f"the cluster at {self.server} does not know {plural}.{api.GROUP}: "
                "install corral's CRDs (helm install corral charts/corral)"
            )
        return list(result.get("items") or ())

    def apply(self, obj: Mapping[str, Any]) -> ApplyResult:
        """Server-side apply with the ``corral-cli`` field manager, taking over the fields it
        sets from other managers (re-running a command converges, it does not fail)."""
        plural = api.MODELS if obj["kind"] == "Model" else api.MODELSERVERS
        path = self.corral_path(plural, obj["metadata"]["name"])
        before = self.call("GET", path)
        after = self.call(
            "PATCH",
            path,
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        if after is None:
            raise ClusterError(
                f"the cluster at {self.server} does not know {plural}.{api.GROUP}: "
                "install corral's CRDs (helm install corral charts/corral)"
            )
        if before is None:
            action = "created"
        elif before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
            action = "unchanged"
        else:
            action = "configured"
        return ApplyResult(after, action)

    def services(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self.call(
            "GET", f"/api/v1/namespaces/{namespace}/services", query=[("labelSelector", selector)]
        )
        return list((result or {}).get("items") or ())

    def endpoints(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.call("GET", f"/api/v1/namespaces/{namespace}/endpoints/{quote(name)}")


def ready_addresses(endpoints: Mapping[str, Any] | None, port_name: str | None = None) -> list[str]:
    """``ip:port`` of every ready address of an Endpoints object (pods that pass readiness)."""
    found: list[str] = []
    for subset in (endpoints or {}).get("subsets") or ():
        ports = subset.get("ports") or ()
        port = next(
            (p["port"] for p in ports if port_name is None or p.get("name") == port_name),
            None,
        )
        if port is None:
            continue
        for address in subset.get("addresses") or ():
            found.append(f"{address['ip']}:{port}")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    # urllib3 wraps the socket error several levels deep; the innermost says what happened.
    reason: BaseException = exc
    while True:
        inner = getattr(reason, "reason", None) or reason.__cause__ or reason.__context__
        if not isinstance(inner, BaseException) or inner is reason:
            break
        reason = inner
    text = _first_line(reason)
    # "<urllib3.connection.HTTPSConnection object at 0x…>: Failed to establish …" -> the cause.
    return text.split(">: ", 1)[-1]


def _api_error(method: str, path: str, status: int, data: bytes | str) -> str:
    try:
        message = str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        message = text.strip()
    if status in (401, 403):
        return f"the cluster refused {method} {path} ({status}): {message}"
    return f"{method} {path} failed ({status}): {message}"

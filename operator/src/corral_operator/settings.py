"""The operator package's settings: the only readers of environment variables in it.

``OperatorSettings`` is the controller's (``CORRAL_OPERATOR_*``), read once by its entry point.
Nested values (cache profiles, default resources, tolerations) are JSON in the environment, e.g.
``CORRAL_OPERATOR_CACHE_PROFILES='{"default": {"size": "100Gi", "storageClassName": "nfs"}}'``.
``KubeClientSettings`` is where an API client finds its cluster (``KUBECONFIG``,
``KUBERNETES_SERVICE_HOST``), for the controller's start-up and the cluster CLI alike;
``CliSettings`` the cluster CLI's own variables. Everything else takes the values as arguments.
This module imports neither kopf nor the kubernetes client: the CLI imports it.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from corral_operator import api

AccessMode = Literal["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"]


class CacheProfile(BaseModel):
    """One blob-cache PVC per profile per namespace.

    ReadWriteMany is the recommended access mode: pull Jobs write and runtime pods on any node
    read the same claim. ReadWriteOnce works only while every pod lands on one node.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    size: str = "50Gi"
    storage_class_name: str | None = Field(default=None, alias="storageClassName")
    access_mode: AccessMode = Field(default="ReadWriteMany", alias="accessMode")


class DefaultResources(BaseModel):
    """Requests (and memory limit) for runtime pods whose ModelServer does not set them."""

    model_config = ConfigDict(frozen=True)

    cpu: str = "1"
    memory: str = "2Gi"


class KubeClientSettings(BaseSettings):
    """Where a Kubernetes API client finds its cluster, from the variables kubectl and pods use.

    Values are kept exactly as set: the names are matched case-sensitively, as the kubernetes
    client reads them, and an empty ``KUBECONFIG`` stays empty (not unset) for the callers that
    tell the two apart. Each caller decides what wins; the controller's start-up and the CLI
    decide differently.
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    kubeconfig: str | None = Field(
        default=None,
        validation_alias="KUBECONFIG",
        description="Kubeconfig files, separated by os.pathsep as kubectl reads them.",
    )
    service_host: str | None = Field(
        default=None,
        validation_alias="KUBERNETES_SERVICE_HOST",
        description="Set by Kubernetes in every pod: the process runs inside a cluster.",
    )

    @property
    def in_pod(self) -> bool:
        """Whether Kubernetes started this process (its service account is mounted)."""
        return bool(self.service_host)

    @property
    def kubeconfig_paths(self) -> list[str]:
        """``KUBECONFIG``'s files in order, skipping empty entries (``a::b``, a trailing ``:``)."""
        return [path for path in (self.kubeconfig or "").split(os.pathsep) if path]


class CliSettings(BaseSettings):
    """What the environment tells the cluster CLI (``corral run`` and its siblings).

    ``CORRAL_HOST`` wins over ``OLLAMA_HOST`` (so a shell set up for Ollama still works); a
    blank one counts as unset. ``CORRAL_GATEWAY_NAMESPACE`` and ``CORRAL_API_KEY`` are the
    defaults of ``--gateway-namespace`` and ``--api-key``.
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    corral_host: str | None = Field(default=None, validation_alias="CORRAL_HOST")
    ollama_host: str | None = Field(default=None, validation_alias="OLLAMA_HOST")
    gateway_namespace: str | None = Field(default=None, validation_alias="CORRAL_GATEWAY_NAMESPACE")
    api_key: str | None = Field(default=None, validation_alias="CORRAL_API_KEY")

    @property
    def host(self) -> str | None:
        """The server named by the environment: the first of CORRAL_HOST and OLLAMA_HOST that
        is not blank, as set."""
        return next(
            (raw for raw in (self.corral_host, self.ollama_host) if raw and raw.strip()), None
        )


class OperatorSettings(BaseSettings):
    """Everything the operator can be told; every field is ``CORRAL_OPERATOR_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty watches the whole cluster."
    )
    runtime_image: str = "ghcr.io/corral-dev/corral-runtime:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    cache_profiles: dict[str, CacheProfile] = Field(
        default_factory=lambda: {"default": CacheProfile()}
    )
    default_resources: DefaultResources = Field(default_factory=DefaultResources)
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        description="Added to runtime pods that request GPUs.",
    )
    pull_backoff_limit: int = Field(default=3, ge=0)
    pull_deadline_seconds: int = Field(default=6 * 3600, ge=60)
    gc_deadline_seconds: int = Field(default=600, ge=30)
    startup_seconds: int = Field(default=1800, ge=10, description="Default model-load allowance.")
    resync_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Every Model and ModelServer is reconciled this often even without an event "
        "(drift in what is not watched, missed events); 0 turns the resync off.",
    )
    pull_progress_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often a pulling Model's status.completedBytes/totalBytes are refreshed "
        "from its pull pod's log.",
    )
    keep_alive_check_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often each ModelServer's keep-alive is checked (scale to minReplicas "
        "once idle past its deadline with nothing in flight).",
    )
    in_flight_stale_seconds: float = Field(
        default=api.IN_FLIGHT_STALE_SECONDS,
        gt=0,
        description="An in-flight count older than this (by lastRequestTime) is ignored: the "
        "gateway that wrote it refreshes lastRequestTime while requests are in flight.",
    )
    runtime_network_policy: bool = Field(
        default=True,
        description="Give each ModelServer's pods a NetworkPolicy: ingress from the gateway "
        "(and runtime_ingress_from) on the runtime port only, egress to DNS only.",
    )
    gateway_namespace: str | None = Field(
        default=None,
        description="The gateway pods' namespace, for the runtime NetworkPolicy; unset: the "
        "ModelServer's own namespace.",
    )
    gateway_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "corral",
            "app.kubernetes.io/component": "gateway",
        },
        description="Labels that select the gateway pods, for the runtime NetworkPolicy.",
    )
    runtime_ingress_from: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More NetworkPolicy peers allowed to reach runtime pods (e.g. Prometheus, "
        "when it scrapes them).",
    )
    liveness_endpoint: str | None = Field(
        default=None, description="e.g. http://0.0.0.0:8080/healthz for the pod's liveness probe."
    )
    kube_client: KubeClientSettings = Field(
        default_factory=KubeClientSettings,
        description="Where the operator finds its cluster (their own variables: KUBECONFIG, "
        "KUBERNETES_SERVICE_HOST).",
    )
    finalizer: str = "corral.dev/finalizer"
    annotation_prefix: str = "corral.dev"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # "a,b" is friendlier in a Deployment's env than a JSON list.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

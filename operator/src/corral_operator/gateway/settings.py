"""The gateway's settings: one pydantic-settings class, read from ``CORRAL_GATEWAY_*`` variables.

``CORRAL_GATEWAY_STATIC_SERVERS`` (JSON) runs the gateway without Kubernetes in front of fixed
runtime servers, e.g. ``{"local": {"models": ["gemma3:270m"], "endpoints": ["127.0.0.1:11435"]}}``
(``"routing": "LeastInFlight"`` beside them turns the cache-aware choice off);
otherwise the routing table comes from the cluster's ModelServers, Models and Endpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class StaticServer(BaseModel):
    model_config = ConfigDict(frozen=True)

    models: list[str]
    endpoints: list[str] = Field(description="host:port of each runtime server.")
    routing: Literal["CacheAware", "LeastInFlight"] = Field(
        default="CacheAware",
        description="How a request picks among the endpoints, as a ModelServer's "
        "spec.routing.strategy.",
    )


class GatewaySettings(BaseSettings):
    """Everything the gateway can be told; every field is ``CORRAL_GATEWAY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_GATEWAY_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(default=11434, ge=0, le=65535)
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to route to; empty means all."
    )
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file; unset uses in-cluster credentials."
    )
    static_servers: dict[str, StaticServer] = Field(default_factory=dict)

    hold_deadline_seconds: float = Field(
        default=600.0, gt=0, description="How long a request waits for its server to start."
    )
    hold_queue_size: int = Field(
        default=100, ge=0, description="Requests held per model while its server starts."
    )
    retry_after_seconds: int = Field(default=10, ge=1)
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="Keep-alive output interval on held streams."
    )
    target_in_flight_per_pod: float = Field(
        default=4.0, gt=0, description="Scale up while requests per ready pod exceed this."
    )
    activity_interval_seconds: float = Field(
        default=10.0, gt=0, description="At most one lastRequestTime write per server per this."
    )
    max_keep_alive_seconds: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "How long after its last request a request's keep_alive may keep a static server's "
            "models counted as alive (a ModelServer's bound is its spec.maxKeepAliveSeconds)."
        ),
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    probe_starting_pods: bool = Field(
        default=True,
        description="While requests wait, probe the server's starting pods (their /readyz) and "
        "route to one as soon as it answers, before the cluster marks it Ready.",
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys (Bearer tokens); empty: no check."
    )
    api_key_secret: str | None = Field(
        default=None,
        description="namespace/name of a Secret whose every value is an accepted API key.",
    )

    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names served besides IP addresses and localhost (comma-separated; "
        "'*' any, '.example.com' that name and those below it). Bound to loopback, only those "
        "are served; bound to any other address, every Host is served while this is empty.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed besides local ones (comma-separated, '*' "
        "wildcards, e.g. 'https://chat.example.com'); other origins are refused (403).",
    )
    graceful_shutdown_seconds: int = Field(
        default=30,
        ge=1,
        description="On SIGTERM new requests answer 503 while held and proxied requests finish, "
        "for up to this long; then the gateway exits.",
    )

    @field_validator("namespaces", "api_keys", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

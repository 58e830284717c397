"""Names shared by every part of the operator: the API group, labels, child-object names, and
the keep-alive contract between the gateway (which records activity on a ModelServer) and the
controller (which scales it back down)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GROUP = "corral.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MODELS = "models"
MODELSERVERS = "modelservers"

FIELD_MANAGER = "corral-operator"
RUNTIME_PORT = 11434
MODELS_MOUNT = "/models"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MODELSERVER = f"{GROUP}/modelserver"
LABEL_MODEL = f"{GROUP}/model"
LABEL_CACHE = f"{GROUP}/cache"
RUNTIME_APP = "corral-runtime"
MANAGED_BY = "corral-operator"

ANNOTATION_MODELS = f"{GROUP}/models"
ANNOTATION_PULL_SPEC = f"{GROUP}/pull-spec"

# Keep-alive: the gateway writes these on a ModelServer, the controller's one replica decision
# reads them (planners.replicas).
ANNOTATION_IDLE_DEADLINE = f"{GROUP}/idle-deadline"
"""When every served model's requested ``keep_alive`` runs out (RFC 3339)."""
ANNOTATION_IN_FLIGHT = f"{GROUP}/in-flight"
"""Requests the gateway has in flight or held for the server."""
ANNOTATION_WAKE = f"{GROUP}/wake-requested"
"""Written by the gateway to make the controller reconcile a server whose replicas were asked
for already but none run."""
DEFAULT_KEEP_ALIVE_SECONDS = 300
DEFAULT_MAX_KEEP_ALIVE_SECONDS = 3600
# An in-flight count older than this (by lastRequestTime) is ignored: the gateway that wrote it
# refreshes lastRequestTime while requests are in flight, so a dead gateway's count goes stale.
IN_FLIGHT_STALE_SECONDS = 120.0
# The idle deadline of a server a request asked to keep forever (maxKeepAliveSeconds -1).
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

# Model.spec.parameters (camelCase, as Kubernetes fields are named) -> Ollama's parameter names
# (a Modelfile's PARAMETER lines, the runtime's options). The pull Job passes a Model's
# parameters under Ollama's names; ``corral deploy -f Modelfile`` maps them back.
PARAMETER_NAMES = {
    "temperature": "temperature",
    "topK": "top_k",
    "topP": "top_p",
    "minP": "min_p",
    "typicalP": "typical_p",
    "repeatPenalty": "repeat_penalty",
    "repeatLastN": "repeat_last_n",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
    "seed": "seed",
    "numKeep": "num_keep",
    "numCtx": "num_ctx",
    "numPredict": "num_predict",
    "numBatch": "num_batch",
    "numGpu": "num_gpu",
    "mainGpu": "main_gpu",
    "numa": "numa",
    "useMmap": "use_mmap",
    "numThread": "num_thread",
    "stop": "stop",
}

_MAX_NAME = 63


def child_name(prefix: str, name: str, max_length: int = _MAX_NAME) -> str:
    """``<prefix>-<name>``, shortened with a stable hash suffix when it would be too long.

    Job and Service names end up in label values and DNS labels, so they must stay within 63
    characters while remaining unique per parent.
    """
    full = f"{prefix}-{name}"
    if len(full) <= max_length:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{full[: max_length - 9].rstrip('-.')}-{digest}"


def cache_pvc_name(profile: str) -> str:
    """The blob-cache claim of a cache profile (one per profile per namespace)."""
    return child_name("corral-cache", profile)


def server_child_name(server: str) -> str:
    """Name of the Deployment and Service of a ModelServer.

    Service names are DNS labels (no dots): dots become dashes, and a hash of the original
    name keeps ``a.b`` and ``a-b`` apart.
    """
    if "." not in server:
        return child_name("corral", server)
    digest = hashlib.sha256(server.encode()).hexdigest()[:8]
    return child_name("corral", f"{server.replace('.', '-')[:45]}-{digest}")


def pull_job_name(model: str) -> str:
    return child_name("corral-pull", model)


def gc_job_name(model: str) -> str:
    return child_name("corral-gc", model)


def max_keep_alive(spec: Mapping[str, Any]) -> float | None:
    """``spec.maxKeepAliveSeconds`` of a ModelServer in seconds; None (no bound) for a negative
    value. The gateway bounds the deadlines it writes by it, the controller the ones it reads."""
    raw = spec.get("maxKeepAliveSeconds", DEFAULT_MAX_KEEP_ALIVE_SECONDS)
    value = float(DEFAULT_MAX_KEEP_ALIVE_SECONDS if raw is None else raw)
    return None if value < 0 else value


def rfc3339(moment: datetime) -> str:
    """A timestamp as the API writes them (``2026-01-02T03:04:05Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: object) -> datetime | None:
    """An API timestamp (RFC 3339) as an aware datetime; None when absent or unreadable."""
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

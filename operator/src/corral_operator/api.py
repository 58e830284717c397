"""Names shared by every part of the operator: the API group, labels, child-object names."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

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

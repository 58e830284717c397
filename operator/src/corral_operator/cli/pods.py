"""What a ModelServer's ready pods have loaded: each pod's /api/ps, asked directly.

Pod IPs answer only from inside the cluster's network (or a flat network such as this
project's test cluster); where none answers, ``corral ps`` shows ``-`` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from corral_operator import api
from corral_operator.cli.cluster import Cluster, ready_addresses

PROBE_TIMEOUT = 1.5


def pod_loaded(address: str) -> list[str] | None:
    """Names in ``http://address/api/ps``; None when the pod does not answer."""
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as http:
            response = http.get(f"http://{address}/api/ps")
            if response.status_code != 200:
                return None
            return [str(m.get("name") or m.get("model")) for m in response.json()["models"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None


def loaded_models(cluster: Cluster, server: Mapping[str, Any]) -> list[str] | None:
    """The union of what the server's ready pods report; None when no pod answered."""
    service = api.server_child_name(server["metadata"]["name"])
    addresses = ready_addresses(cluster.endpoints(cluster.namespace, service))
    answered = [names for names in map(pod_loaded, addresses) if names is not None]
    if not answered:
        return None
    return sorted({name for names in answered for name in names})

"""The gateway's own answers about models: /api/tags and /v1/models from the routing table, and
/api/ps folded together from the pods' own answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from corral_operator.gateway.protocol import normalize_model_name
from corral_operator.gateway.topology import ModelEntry


def _ready_since(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            since = cond.get("lastTransitionTime")
            return str(since) if since else None
    return None


def ollama_tag(entry: ModelEntry) -> dict[str, Any]:
    status = entry.status
    family = status.get("family") or ""
    return {
        "name": entry.name,
        "model": entry.name,
        "modified_at": _ready_since(status) or "1970-01-01T00:00:00Z",
        "size": int(status.get("sizeBytes") or 0),
        "digest": str(status.get("digest") or "").removeprefix("sha256:"),
        "details": {
            "parent_model": "",
            "format": status.get("format") or "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": status.get("parameterSize") or "",
            "quantization_level": status.get("quantization") or "",
        },
    }


def ollama_tags(entries: Iterable[ModelEntry]) -> dict[str, Any]:
    return {"models": [ollama_tag(e) for e in entries]}


def _created(entry: ModelEntry) -> int:
    since = _ready_since(entry.status)
    if not since:
        return 0
    try:
        return int(datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def openai_model(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": _created(entry), "owned_by": "corral"}


def openai_models(entries: Iterable[ModelEntry]) -> dict[str, Any]:
    return {"object": "list", "data": [openai_model(e) for e in entries]}


def listed_model(entries: Iterable[ModelEntry], name: str) -> ModelEntry | None:
    """The listed entry ``name`` means, however it is spelled (see ``normalize_model_name``)."""
    key = normalize_model_name(name)
    return next((e for e in entries if normalize_model_name(e.name) == key), None)


def merge_ps(answers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Every pod's loaded models in one list, the longest-lived first (as Ollama orders them);
    a model loaded on several pods appears once per pod."""
    models: list[dict[str, Any]] = []
    for answer in answers:
        models.extend(dict(m) for m in answer.get("models") or ())
    far_future = datetime.max.replace(tzinfo=UTC).isoformat()
    models.sort(key=lambda m: str(m.get("expires_at") or far_future), reverse=True)
    return {"models": models}


def expiring_at(answer: Mapping[str, Any], at: datetime | None) -> dict[str, Any]:
    """A pod's ``/api/ps`` answer with its models expiring when their server goes to zero.

    A runtime pod keeps its models loaded for as long as it runs (it reports "forever"): the
    server's keep-alive is the gateway's and the operator's, so ``at``, when it scales to zero,
    is when they really go. None (a server kept up by minReplicas, or not idle-scaled) keeps the
    pod's own answer."""
    models = [dict(m) for m in answer.get("models") or ()]
    if at is not None:
        stamp = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        for model in models:
            model["expires_at"] = stamp
    return {**answer, "models": models}


async def loaded_models(
    client: aiohttp.ClientSession,
    endpoints: Iterable[str],
    expiry: Mapping[str, datetime | None] | None = None,
) -> dict[str, Any]:
    """``/api/ps`` of the whole cluster: every pod asked at once, those that do not answer
    left out (a pod going away must not fail the listing); ``expiry`` maps a pod's endpoint to
    when its server goes to zero (``expiring_at``)."""
    asked = sorted(set(endpoints))
    answers = await asyncio.gather(*(_pod_ps(client, e) for e in asked))
    until = expiry or {}
    return merge_ps(
        expiring_at(a, until.get(e)) for e, a in zip(asked, answers, strict=True) if a is not None
    )


async def _pod_ps(client: aiohttp.ClientSession, endpoint: str) -> dict[str, Any] | None:
    try:
        async with client.get(
            f"http://{endpoint}/api/ps", timeout=aiohttp.ClientTimeout(total=5.0)
        ) as response:
            data = await response.json(content_type=None) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return data if isinstance(data, dict) else None

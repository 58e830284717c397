"""What the model endpoints report about stored and loaded models (/api/show, /api/ps), built
on the store's catalog (which also serves /api/tags and /v1/models)."""

from __future__ import annotations

import datetime
import math
from typing import Any

from corral_runtime.engine.manager import LoadedModel, model_template
from corral_runtime.store.catalog import ModelEntry, model_details
from corral_runtime.store.gguf import ArrayInfo, read_gguf_metadata
from corral_runtime.store.layout import StoredModel
from corral_runtime.templates.chat import capabilities_of

FOREVER_RFC3339 = "2318-11-26T00:00:00Z"  # keep_alive < 0: a time that never comes


def rfc3339(timestamp: float) -> str:
    """A Unix time as RFC 3339; one past what a datetime holds (or not finite) is "never"."""
    if not math.isfinite(timestamp):
        return FOREVER_RFC3339
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return FOREVER_RFC3339
    return moment.isoformat().replace("+00:00", "Z")


def ps_entry(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "size": model.plan.size_bytes,
        "digest": model.stored.manifest.digest.removeprefix("sha256:"),
        "details": ModelEntry(model.stored, model.details).details_json(),
        "expires_at": rfc3339(model.expires_at),
        "size_vram": model.plan.size_vram_bytes,
        "context_length": model.n_ctx,
    }


def capabilities(stored: StoredModel) -> list[str]:
    """What its template lets the model do (none when the model file cannot be read). No
    "vision" for a model with a projector: images are refused until corral runs it."""
    details = model_details(stored)
    if details is None:
        return []
    return [capability.value for capability in capabilities_of(model_template(stored, details))]


def _format_param(key: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [f"{key:<30} {_param_text(v)}" for v in values]


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def show_entry(stored: StoredModel, *, verbose: bool) -> dict[str, Any]:
    details = model_details(stored)
    parameters = "\n".join(
        line for key in sorted(stored.params) for line in _format_param(key, stored.params[key])
    )
    metadata = read_gguf_metadata(stored.model_path, keep_arrays=verbose)
    model_info = {
        key: value
        for key, value in metadata.items()
        if not key.startswith("GGUF.") and not isinstance(value, ArrayInfo)
    }
    gguf_template = details.chat_template if details else None
    template = stored.template if stored.template is not None else (gguf_template or "")
    modelfile_lines = [f"FROM {stored.model_path}"]
    if stored.template:
        modelfile_lines.append(f'TEMPLATE """{stored.template}"""')
    if stored.system:
        modelfile_lines.append(f'SYSTEM """{stored.system}"""')
    modelfile_lines += [f"PARAMETER {line}" for line in parameters.splitlines()]
    if stored.license:
        modelfile_lines.append(f'LICENSE """{stored.license}"""')
    return {
        "license": stored.license or "",
        "modelfile": "\n".join(modelfile_lines) + "\n",
        "parameters": parameters,
        "template": template,
        "system": stored.system or "",
        "details": ModelEntry(stored, details).details_json(),
        "model_info": model_info,
        "capabilities": capabilities(stored),
        "modified_at": ModelEntry(stored, details).modified_at,
    }

"""How a model reference on the command line becomes Kubernetes names.

``corral deploy gemma3:270m`` creates a Model and a ModelServer both named ``gemma3-270m``; the
samples under manifests/ follow the same rule, so ``corral deploy`` and ``kubectl apply`` of a
sample converge on the same objects. Names keep dots (``qwen2.5:0.5b`` -> ``qwen2.5-0.5b``)
because both kinds accept DNS subdomains, and stay within 63 characters because the operator
puts the ModelServer's name into label values.
"""

from __future__ import annotations

import hashlib
import re

from corral_operator.sources import (
    DEFAULT_TAG,
    InvalidSourceError,
    parse_source,
    served_name,
)

MAX_NAME_LENGTH = 63
_NOT_IN_LABEL = re.compile(r"[^a-z0-9]+")


def dns_name(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """``text`` as a DNS-1123 subdomain: lowercase, dot-separated labels of ``[a-z0-9-]`` that
    start and end alphanumeric. Too-long results are cut and given a hash of ``text`` so that
    two long names differing only at the end stay apart."""
    labels = (_NOT_IN_LABEL.sub("-", part).strip("-") for part in text.lower().split("."))
    name = ".".join(label for label in labels if label)
    if not name:
        raise InvalidSourceError(f"{text!r} leaves nothing to name a Kubernetes object after")
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: max_length - 9].rstrip('-.')}-{digest}"


def resource_name(model: str) -> str:
    """The Model and ModelServer name for a model reference (anything ``spec.source`` accepts).

    Ollama names keep their namespace and tag (``:latest`` is implied and dropped, so ``gemma3``
    and ``gemma3:latest`` name the same objects); files (hf://, https://, pvc://) are named
    after the file, without ``.gguf``.
    """
    source = parse_source(model)
    if source.scheme == "ollama":
        base = source.location.removesuffix(f":{DEFAULT_TAG}")
    else:
        path = source.location.split("@", 1)[0] if source.scheme == "hf" else source.location
        base = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if base.lower().endswith(".gguf"):
            base = base[: -len(".gguf")]
    return dns_name(base)


def client_model_name(model: str) -> str:
    """The name clients send in ``"model"`` once the model is served (``gemma3:270m``)."""
    return served_name(parse_source(model), resource_name(model))

"""Model names by Ollama's rules: ``[host/][namespace/]model[:tag]``.

Every name is validated here before it is turned into a path, so that no user-supplied string
can reach the file system unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


class InvalidNameError(ValueError):
    """A model name that does not follow Ollama's naming rules."""


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified model name."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The short form Ollama shows: host and namespace omitted when they are the defaults."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, str, str, str]:
        """Lookups are case-insensitive."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def __str__(self) -> str:
        return self.display


def parse_name(raw: str) -> ModelName:
    """Parse and validate a model name, filling in Ollama's defaults.

    Raises InvalidNameError for anything that is not a valid name, including path traversal
    attempts such as ``../x`` or names with empty parts.
    """
    if not isinstance(raw, str) or not raw or raw != raw.strip():
        raise InvalidNameError(f"invalid model name {raw!r}")
    rest, tag = raw, DEFAULT_TAG
    # A tag follows the last ':' that comes after the last '/' (a host may carry a port).
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, namespace, model = DEFAULT_HOST, parts[0], parts[1]
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        raise InvalidNameError(f"invalid model name {raw!r}: too many '/' separated parts")
    checks = (
        (_HOST, host, "host"),
        (_NAMESPACE, namespace, "namespace"),
        (_PART, model, "model"),
        (_PART, tag, "tag"),
    )
    for pattern, value, what in checks:
        if not pattern.fullmatch(value) or value in (".", ".."):
            raise InvalidNameError(f"invalid model name {raw!r}: bad {what} {value!r}")
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def is_valid_name(raw: str) -> bool:
    try:
        parse_name(raw)
    except InvalidNameError:
        return False
    return True

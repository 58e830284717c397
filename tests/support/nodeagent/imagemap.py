"""The image map: which local command stands in for a container image.

The file (YAML or JSON) maps an image reference to an entry::

    images:
      corral-test/http:1: {entrypoint: [python3, -m, http.server], cmd: ["8080"]}
      ghcr.io/corral/runtime: {entrypoint: [.venv/bin/corral, serve], env: {CORRAL_X: "1"}}
      example.org/tools/*: [/usr/bin/env]

A bare list is shorthand for ``{entrypoint: [...]}``. Keys match, in order of preference: the exact
image; the image without its tag or digest; the longest key ending in ``*`` that prefixes the image.
The entry plays the image's ENTRYPOINT/CMD, combined with the container's command/args as a
container runtime would. A relative argv[0] that contains a slash is resolved against the map
file's directory, so a map can live next to the tree it points into.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ImageMapError(ValueError):
    """The image map file is malformed."""


@dataclass(frozen=True)
class ImageEntry:
    """What an image runs: its entrypoint, default args, extra environment and working dir."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None


@dataclass(frozen=True)
class ImageMap:
    """Image reference -> entry, with the lookup rules described in the module docstring."""

    entries: Mapping[str, ImageEntry]
    source: str = "<inline>"

    def resolve(self, image: str) -> ImageEntry | None:
        if image in self.entries:
            return self.entries[image]
        repository = image_repository(image)
        if repository in self.entries:
            return self.entries[repository]
        prefixes = [k for k in self.entries if k.endswith("*") and image.startswith(k[:-1])]
        if prefixes:
            return self.entries[max(prefixes, key=len)]
        return None


def image_repository(image: str) -> str:
    """``host:5000/org/name:tag@sha256:…`` -> ``host:5000/org/name``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    return name


def container_argv(
    entry: ImageEntry, command: Sequence[str] | None, args: Sequence[str] | None
) -> list[str]:
    """Combine the image's entrypoint/cmd with the container's command/args.

    Same rule as Kubernetes over a container runtime: ``command`` replaces the entrypoint (and
    drops the image's default args), ``args`` replaces the default args.
    """
    if command:
        return [*command, *(args or [])]
    return [*entry.entrypoint, *(args if args else entry.cmd)]


def parse_image_map(data: Any, base_dir: Path, source: str = "<inline>") -> ImageMap:
    """Validate the decoded file and build the map; relative argv[0] paths resolve to base_dir."""
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), Mapping):
        raise ImageMapError(f"{source}: expected a mapping with an 'images' mapping")
    entries: dict[str, ImageEntry] = {}
    for key, raw in data["images"].items():
        if not isinstance(key, str) or not key:
            raise ImageMapError(f"{source}: image keys must be non-empty strings")
        spec: Mapping[str, Any] = {"entrypoint": raw} if isinstance(raw, list) else raw
        if not isinstance(spec, Mapping):
            raise ImageMapError(f"{source}: entry for {key!r} must be a list or a mapping")
        entrypoint = _strings(spec.get("entrypoint"), f"{source}: {key}.entrypoint")
        if not entrypoint:
            raise ImageMapError(f"{source}: {key}.entrypoint must not be empty")
        if "/" in entrypoint[0] and not entrypoint[0].startswith("/"):
            entrypoint[0] = str((base_dir / entrypoint[0]).resolve())
        env = spec.get("env") or {}
        if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
            raise ImageMapError(f"{source}: {key}.env must map names to strings")
        working_dir = spec.get("workingDir")
        if working_dir is not None and not isinstance(working_dir, str):
            raise ImageMapError(f"{source}: {key}.workingDir must be a string")
        entries[key] = ImageEntry(
            entrypoint=tuple(entrypoint),
            cmd=tuple(_strings(spec.get("cmd") or [], f"{source}: {key}.cmd")),
            env={str(k): v for k, v in env.items()},
            working_dir=working_dir,
        )
    return ImageMap(entries=entries, source=source)


def load_image_map(path: Path) -> ImageMap:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return parse_image_map(data, path.resolve().parent, str(path))


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageMapError(f"{what} must be a list of strings")
    return list(value)

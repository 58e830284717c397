"""What a pull may be asked to download: declared sizes checked before anything is planned.

A manifest (or a server's size headers) is untrusted: a layer declaring 2^62 bytes used to make
the downloader build a part list for it before it looked at the disk. These pure checks run
first, on the declared numbers alone: the count of layers, a ceiling on any one blob, a small
ceiling on the layers that are text (template, system prompt, parameters, licence, messages,
config), and the total still to fetch against the free space of the store's filesystem.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral_runtime.store.layout import (
    LICENSE_LAYER,
    MESSAGES_LAYER,
    PARAMS_LAYER,
    SYSTEM_LAYER,
    TEMPLATE_LAYER,
    Layer,
    Manifest,
)
from corral_runtime.store.transfer import PullError

MAX_LAYERS = 64
# The largest GGUF files published are a few hundred GB; a blob beyond this is not a model.
MAX_BLOB_BYTES = 4 * 1024**4
# Text layers and the config blob are kilobytes; a licence is the largest seen (~100 KB).
MAX_TEXT_LAYER_BYTES = 8 * 1024 * 1024
TEXT_LAYERS = frozenset({TEMPLATE_LAYER, SYSTEM_LAYER, PARAMS_LAYER, LICENSE_LAYER, MESSAGES_LAYER})
# Room kept free beyond the blobs themselves (manifests, sidecars, the filesystem's own needs).
SPACE_MARGIN_BYTES = 64 * 1024 * 1024


class DeclaredSizeError(PullError):
    """A manifest or server declares sizes no pull should attempt (the request is refused)."""


class InsufficientSpaceError(PullError):
    """The blobs still to fetch do not fit in the store's free space."""


def _size_text(size: int) -> str:
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def check_blob_size(size: object, what: str) -> int:
    """A declared blob size as an int, or DeclaredSizeError (not an integer, negative, huge)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DeclaredSizeError(f"{what} declares an invalid size {size!r}")
    if size > MAX_BLOB_BYTES:
        raise DeclaredSizeError(
            f"{what} declares {size} bytes, more than the {_size_text(MAX_BLOB_BYTES)} "
            "corral accepts for one blob"
        )
    return size


def check_space(needed: int, free: int, where: str = "the model store") -> None:
    """Refuse before downloading what cannot fit (keeping ``SPACE_MARGIN_BYTES`` free)."""
    if needed > max(free - SPACE_MARGIN_BYTES, 0):
        raise InsufficientSpaceError(
            f"not enough space in {where}: the pull needs {_size_text(needed)}, "
            f"{_size_text(free)} is free"
        )


def check_manifest(manifest: Manifest, name: str, missing: Iterable[str], free: int) -> None:
    """Every check on a manifest's declared layers, before any of them is fetched.

    ``missing`` are the digests the store does not hold yet (only those need space).
    """
    layers: list[Layer] = [manifest.config, *manifest.layers]
    if len(manifest.layers) > MAX_LAYERS:
        raise DeclaredSizeError(
            f"the manifest of {name} has {len(manifest.layers)} layers; at most {MAX_LAYERS} "
            "are accepted"
        )
    for layer in layers:
        what = f"layer {layer.digest} of {name}"
        size = check_blob_size(layer.size, what)
        text = layer is manifest.config or layer.media_type in TEXT_LAYERS
        if text and size > MAX_TEXT_LAYER_BYTES:
            kind = "config" if layer is manifest.config else layer.media_type.rsplit(".", 1)[-1]
            raise DeclaredSizeError(
                f"the {kind} layer of {name} declares {size} bytes; text layers may have at "
                f"most {_size_text(MAX_TEXT_LAYER_BYTES)}"
            )
    wanted = set(missing)
    sizes = {layer.digest: layer.size for layer in layers if layer.digest in wanted}
    check_space(sum(sizes.values()), free)

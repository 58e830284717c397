"""Declared sizes checked before a pull plans anything (pure checks on the manifest's numbers)."""

from __future__ import annotations

import json

import pytest

from corral_runtime.store.download import MAX_PARTS, chunk_ranges, part_size
from corral_runtime.store.layout import LAYER_PREFIX, Manifest
from corral_runtime.store.limits import (
    MAX_BLOB_BYTES,
    MAX_LAYERS,
    MAX_TEXT_LAYER_BYTES,
    SPACE_MARGIN_BYTES,
    DeclaredSizeError,
    InsufficientSpaceError,
    check_blob_size,
    check_manifest,
    check_space,
)

pytestmark = pytest.mark.unit

TiB = 1024**4


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def manifest(layers: list[tuple[str, int]], config_size: int = 100) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "config": {"mediaType": "config", "digest": digest(0), "size": config_size},
        "layers": [
            {"mediaType": LAYER_PREFIX + kind, "digest": digest(i + 1), "size": size}
            for i, (kind, size) in enumerate(layers)
        ],
    }
    return Manifest.parse(json.dumps(doc).encode())


def all_digests(m: Manifest) -> list[str]:
    return [m.config.digest, *(layer.digest for layer in m.layers)]


class TestBlobSize:
    @pytest.mark.parametrize("size", [-1, 1.5, "12", None, True, MAX_BLOB_BYTES + 1, 2**62])
    def test_refused(self, size: object) -> None:
        with pytest.raises(DeclaredSizeError):
            check_blob_size(size, "x")

    def test_accepted(self) -> None:
        assert check_blob_size(0, "x") == 0
        assert check_blob_size(MAX_BLOB_BYTES, "x") == MAX_BLOB_BYTES


class TestManifest:
    def test_a_real_models_shape_passes(self) -> None:
        m = manifest([("model", 5 * 1024**3), ("template", 1200), ("params", 80)])
        check_manifest(m, "m", all_digests(m), free=10 * 1024**3)

    def test_too_many_layers(self) -> None:
        m = manifest([("model", 1)] + [("template", 1)] * MAX_LAYERS)
        with pytest.raises(DeclaredSizeError, match="at most 64"):
            check_manifest(m, "m", [], free=TiB)

    @pytest.mark.parametrize("kind", ["template", "system", "params", "license", "messages"])
    def test_text_layers_are_small(self, kind: str) -> None:
        m = manifest([("model", 1), (kind, MAX_TEXT_LAYER_BYTES + 1)])
        with pytest.raises(DeclaredSizeError, match=f"the {kind} layer of m"):
            check_manifest(m, "m", [], free=TiB)

    def test_the_config_is_small(self) -> None:
        m = manifest([("model", 1)], config_size=MAX_TEXT_LAYER_BYTES + 1)
        with pytest.raises(DeclaredSizeError, match="the config layer"):
            check_manifest(m, "m", [], free=TiB)

    def test_only_missing_blobs_need_space(self) -> None:
        m = manifest([("model", 600), ("projector", 600)])
        free = 1000 + SPACE_MARGIN_BYTES
        with pytest.raises(InsufficientSpaceError):
            check_manifest(m, "m", all_digests(m), free=free)  # 1300 bytes > 1000
        check_manifest(m, "m", [m.layers[1].digest], free=free)  # the model is present

    def test_space_keeps_a_margin(self) -> None:
        check_space(10, SPACE_MARGIN_BYTES + 10)
        with pytest.raises(InsufficientSpaceError, match="not enough space"):
            check_space(11, SPACE_MARGIN_BYTES + 10)


class TestPartPlan:
    def test_a_plan_never_has_more_than_max_parts(self) -> None:
        chunk = part_size(MAX_BLOB_BYTES, 16 * 1024 * 1024)
        assert len(chunk_ranges(MAX_BLOB_BYTES, chunk)) <= MAX_PARTS
        assert part_size(100 * 1024**2, 16 * 1024**2) == 16 * 1024**2

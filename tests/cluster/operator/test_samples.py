"""The samples are valid against the CRDs on the real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

SAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "samples"


def test_samples_apply(kubectl: Any, namespace: str, crds: None) -> None:
    for sample in sorted(SAMPLES.glob("*.yaml")):
        result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))
        assert result.returncode == 0, f"{sample.name}: {result.stderr}"

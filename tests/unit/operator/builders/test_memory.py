from __future__ import annotations

import pytest

from corral_operator.builders.memory import (
    PROCESS_RESERVE_BYTES,
    memory_budget,
    memory_bytes,
    process_reserve,
)

pytestmark = pytest.mark.unit

GI = 1024**3


class TestMemoryBytes:
    @pytest.mark.parametrize(
        ("quantity", "expected"),
        [
            ("8Gi", 8 * GI),
            ("1.5Gi", 3 * GI // 2),
            ("512Mi", 512 * 1024**2),
            ("2G", 2_000_000_000),
            ("500k", 500_000),
            ("2e9", 2_000_000_000),
            ("1073741824", GI),
            (1073741824, GI),
            (".5Ki", 512),
            ("0.1", 1),  # a fraction of a byte rounds up, as the kubelet rounds
        ],
    )
    def test_quantities(self, quantity: object, expected: int) -> None:
        assert memory_bytes(quantity) == expected

    @pytest.mark.parametrize("quantity", ["", "lots", "8GB", "8gi", "-1Gi", "500m", "1e999"])
    def test_what_is_no_memory_quantity(self, quantity: str) -> None:
        assert memory_bytes(quantity) is None


class TestBudget:
    def test_a_cpu_pod_gets_its_limit_less_the_process_reserve(self) -> None:
        assert memory_budget("4Gi") == 4 * GI - process_reserve(4 * GI)
        assert 0 < memory_budget("4Gi") < 4 * GI  # type: ignore[operator]

    def test_the_reserve_grows_with_the_limit(self) -> None:
        small, large = process_reserve(2 * GI), process_reserve(64 * GI)
        assert PROCESS_RESERVE_BYTES < small < large < 64 * GI // 10

    def test_a_limit_below_the_reserve_fits_no_model(self) -> None:
        assert memory_budget("128Mi") == 0

    def test_an_unreadable_default_leaves_the_budget_to_the_runtime(self) -> None:
        assert memory_budget("plenty") is None

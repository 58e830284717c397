from __future__ import annotations

import pytest

from corral_operator.api import child_name, server_child_name

pytestmark = pytest.mark.unit


def test_child_names_stay_short_and_unique() -> None:
    assert child_name("corral", "srv") == "corral-srv"
    long_a, long_b = "a" * 80, "a" * 79 + "b"
    assert len(child_name("corral-pull", long_a)) <= 63
    assert child_name("corral-pull", long_a) != child_name("corral-pull", long_b)


def test_dotted_server_names_give_valid_service_names() -> None:
    name = server_child_name("qwen2.5-0.5b")
    assert "." not in name and name.startswith("corral-qwen2-5-0-5b-")
    assert name != server_child_name("qwen2-5-0-5b")

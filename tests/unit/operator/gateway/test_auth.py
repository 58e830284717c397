"""API-key checks."""

from __future__ import annotations

import pytest

from corral_operator.gateway.auth import authorized, keys_from_secret

pytestmark = pytest.mark.unit


def test_no_keys_means_open() -> None:
    assert authorized(None, frozenset(), required=False)


def test_required_keys_not_yet_known_deny_everything() -> None:
    assert not authorized("Bearer anything", frozenset(), required=True)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer k1", True),
        ("bearer k2", True),
        ("Bearer k3", False),
        ("Basic k1", False),
        ("Bearer ", False),
        ("k1", False),
        (None, False),
    ],
)
def test_bearer_keys(header: str | None, ok: bool) -> None:
    assert authorized(header, frozenset({"k1", "k2"})) is ok


def test_every_secret_value_and_line_is_a_key() -> None:
    assert keys_from_secret({"api-key": "a\n b \n\n", "other": "c"}) == {"a", "b", "c"}
    assert keys_from_secret(None) == frozenset()

"""Errors as clients see them: a 500 names no file, whatever the layer below put in it."""

from __future__ import annotations

import pytest

from corral_runtime.api.errors import STORE_DAMAGED, as_api_error, without_paths
from corral_runtime.engine.types import EngineError, EngineFailedError
from corral_runtime.store.layout import CorruptStoreError

pytestmark = pytest.mark.unit

BLOB = "/root/.corral/models/blobs/sha256-0123abcd"


def test_engine_errors_answer_their_message_and_keep_the_detail_for_the_log() -> None:
    error = as_api_error(EngineError("llama.cpp could not load the model file", detail=BLOB))
    assert (error.status, error.message) == (500, "llama.cpp could not load the model file")


def test_a_path_in_an_engine_message_is_never_answered() -> None:
    error = as_api_error(EngineError(f"failed to load model from {BLOB}"))
    assert error.status == 500 and BLOB not in error.message and "<path>" in error.message


def test_a_failed_decode_thread_is_a_500_that_says_so() -> None:
    error = as_api_error(EngineFailedError("model m failed; try again", detail="RuntimeError()"))
    assert error.status == 500 and "try again" in error.message


def test_a_damaged_store_answers_a_stable_message() -> None:
    error = as_api_error(CorruptStoreError(f"invalid manifest: {BLOB}: Expecting value"))
    assert (error.status, error.message) == (500, STORE_DAMAGED)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (f"cannot read {BLOB}: denied", "cannot read <path> denied"),
        ("no such file /etc/passwd", "no such file <path>"),
        ("see http://registry/v2/x/blobs/y", "see http://registry/v2/x/blobs/y"),
        ("ratio 1/2 and a/b/c", "ratio 1/2 and a/b/c"),
    ],
)
def test_without_paths(message: str, expected: str) -> None:
    assert without_paths(message) == expected

"""Errors as clients see them: a 500 names no file, whatever the layer below put in it."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from corral_runtime.api.errors import (
    STORE_DAMAGED,
    as_api_error,
    validation_message,
    without_paths,
)
from corral_runtime.api.ollama_protocol import GenerateRequest
from corral_runtime.api.openai_protocol import ChatCompletionRequest
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


def validation_error(model: type[BaseModel], body: dict[str, object]) -> RequestValidationError:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
    raise AssertionError("the body was valid")


def test_a_union_field_is_named_as_the_client_sent_it() -> None:
    message = validation_message(validation_error(GenerateRequest, {"keep_alive": [1]}))
    assert message.startswith("invalid request: keep_alive: expected ")
    assert ".int" not in message and ".str" not in message and "float" not in message


def test_a_nested_union_field_keeps_its_index() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": 5}]}
    message = validation_message(validation_error(ChatCompletionRequest, body))
    assert message.startswith("invalid request: messages.0.content: expected ")
    assert "list[" not in message

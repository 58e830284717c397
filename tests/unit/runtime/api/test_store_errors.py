"""What the store's refusals answer: an upload's, a recipe's and a pull's errors, as API errors."""

from __future__ import annotations

import pytest

from corral_runtime.api.errors import as_api_error, pull_error
from corral_runtime.store.limits import DeclaredSizeError, InsufficientSpaceError
from corral_runtime.store.names import parse_name
from corral_runtime.store.policy import SourceRefusedError
from corral_runtime.store.recipe import RecipeError
from corral_runtime.store.registry import ManifestNotFoundError
from corral_runtime.store.safefs import CorruptStoreError
from corral_runtime.store.upload import UploadDigestMismatchError, UploadTooLargeError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UploadDigestMismatchError("sha256:" + "a" * 64, "sha256:" + "b" * 64), 400),
        (UploadTooLargeError(10), 413),
        (RecipeError("files must name exactly one .gguf file"), 400),
    ],
)
def test_store_refusals_answer_with_their_message(error: Exception, status: int) -> None:
    answer = as_api_error(error)
    assert (answer.status, answer.message) == (status, str(error))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ManifestNotFoundError(parse_name("nope:1")), 404),
        (SourceRefusedError("no"), 403),
        (InsufficientSpaceError("full"), 507),
        (DeclaredSizeError("huge"), 400),
        (CorruptStoreError("bad"), 500),
    ],
)
def test_a_failed_pull_answers_its_status(error: Exception, status: int) -> None:
    answer = pull_error(error)
    assert (answer.status, answer.message) == (status, str(error))

"""Errors in each API's own shape: ``{"error": "…"}`` for Ollama's native API and
``{"error": {"message", "type", "param", "code"}}`` for the OpenAI API (paths under /v1)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral_runtime.api.options import InvalidOptionsError
from corral_runtime.api.text import INVALID_TEXT
from corral_runtime.durations import InvalidKeepAliveError
from corral_runtime.engine.types import (
    EngineError,
    GenerationTimeoutError,
    InvalidRequestError,
    QueueFullError,
)
from corral_runtime.store.digests import InvalidDigestError
from corral_runtime.store.gguf import GGUFError
from corral_runtime.store.layout import CorruptStoreError, ModelNotFoundError
from corral_runtime.store.limits import DeclaredSizeError, InsufficientSpaceError
from corral_runtime.store.names import InvalidNameError
from corral_runtime.store.policy import SourceRefusedError
from corral_runtime.store.recipe import RecipeError
from corral_runtime.store.registry import ManifestNotFoundError
from corral_runtime.store.sources import InvalidSourceError
from corral_runtime.store.transfer import UnsupportedModelError
from corral_runtime.store.upload import UploadError, UploadTooLargeError
from corral_runtime.templates.budget import TemplateBudgetError
from corral_runtime.templates.gotemplate import TemplateError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
    """An error answer: HTTP status and message, plus OpenAI's ``param``/``code`` if known."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def openai_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def error_body(path: str, error: ApiError) -> dict[str, Any]:
    if path.startswith("/v1"):
        return {
            "error": {
                "message": error.message,
                "type": openai_type(error.status),
                "param": error.param,
                "code": error.code,
            }
        }
    return {"error": error.message}


def as_api_error(exc: BaseException) -> ApiError:
    """Map what the layers below raise to the answer a client gets."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return ApiError(404, str(exc), code="model_not_found")
    if isinstance(exc, InvalidNameError | InvalidDigestError):
        return ApiError(400, f"invalid model name: {exc}", param="model")
    if isinstance(exc, InvalidOptionsError | InvalidKeepAliveError | InvalidRequestError):
        return ApiError(400, str(exc))
    if isinstance(exc, UploadTooLargeError):
        return ApiError(413, str(exc))
    if isinstance(exc, RecipeError | UploadError):  # refused input; the store kept none of it
        return ApiError(400, str(exc))
    if isinstance(exc, QueueFullError):
        return ApiError(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, TemplateBudgetError):
        return ApiError(400, str(exc), code="template_budget_exceeded")
    if isinstance(exc, TemplateError):
        return ApiError(500, f"the model's chat template failed: {exc}")
    if isinstance(exc, GenerationTimeoutError):
        return ApiError(500, str(exc), code="generation_timeout")
    if isinstance(exc, GGUFError):  # a model file llama.cpp must not be given: says why
        return ApiError(400, str(exc), code="invalid_model_file")
    if isinstance(exc, EngineError):
        log.error("engine error: %s%s", exc, f" ({exc.detail})" if exc.detail else "")
        return ApiError(500, without_paths(str(exc)))
    if isinstance(exc, CorruptStoreError):
        log.error("store error: %s", exc)
        return ApiError(500, STORE_DAMAGED)
    log.error("unexpected error", exc_info=exc)
    return ApiError(500, "internal server error")


def pull_error(exc: BaseException) -> ApiError:
    """What a failed pull answers: the store's and the puller's errors, each with its own
    status (a missing manifest 404, a refused source 403, no space 507, bad input 400)."""
    if isinstance(exc, ManifestNotFoundError):
        return ApiError(404, str(exc))
    if isinstance(exc, SourceRefusedError):
        return ApiError(403, str(exc), param="model")
    if isinstance(exc, InsufficientSpaceError):
        return ApiError(507, str(exc))
    if isinstance(
        exc,
        (
            InvalidSourceError,
            InvalidNameError,
            InvalidDigestError,
            DeclaredSizeError,
            GGUFError,
            UnsupportedModelError,
        ),
    ):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc))


STORE_DAMAGED = "the model's files in the store are damaged or incomplete; pull the model again"
# An absolute path of two or more components: what a 500 must never show.
_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+[^\s/'\"]*")


def without_paths(message: str) -> str:
    """A message with any filesystem path in it replaced by ``<path>`` (a last line of defence:
    the engine's messages name no files, and their details are logged, not answered)."""
    return _PATH.sub("<path>", message)


def error_response(path: str, exc: BaseException) -> JSONResponse:
    error = as_api_error(exc)
    return JSONResponse(error_body(path, error), status_code=error.status, headers=error.headers)


# The parts of a pydantic error location that name a member of a union type (``int``,
# ``list[str]``, ``function-after[...]``) rather than a field: a client sent a field.
_UNION_MEMBER = re.compile(
    r"^(int|float|str|bool|bytes|none|[\w-]+\[.*\]|(function|constrained|lax|strict|json)-.*)$"
)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A validation error's location as the request's own field path (``keep_alive``, not
    ``body.keep_alive.int``)."""
    parts = [str(p) for p in loc if p != "body" and not _UNION_MEMBER.match(str(p))]
    return ".".join(parts)


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "invalid JSON in request body"
    loc = field_path(first.get("loc", ()))
    # A union's members each report: one message lists what the field takes.
    wanted = [
        str(e.get("msg", "")).removeprefix("Input should be ")
        for e in errors
        if field_path(e.get("loc", ())) == loc
    ]
    msg = str(first.get("msg", "invalid value"))
    if len(wanted) > 1:
        msg = "expected " + ", ".join(dict.fromkeys(wanted[:-1])) + " or " + wanted[-1]
    return f"invalid request: {loc}: {msg}" if loc else f"invalid request: {msg}"


def validation_param(exc: RequestValidationError) -> str | None:
    """The request field a validation error is about (OpenAI's ``param``): the first part of
    its path, or of the field a whole-body check names."""
    errors = exc.errors()
    if not errors:
        return None
    first = errors[0]
    path = field_path(first.get("loc", ()))
    if not path and first.get("type") == INVALID_TEXT:
        path = str((first.get("ctx") or {}).get("path", ""))
    return path.split(".")[0] or None


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            request.url.path,
            ApiError(400, validation_message(exc), param=validation_param(exc)),
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"{request.url.path} not found"
        return error_response(
            request.url.path,
            ApiError(exc.status_code, message, headers=dict(exc.headers or {})),
        )

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in (ApiError, LookupError, ValueError, RuntimeError):
        app.add_exception_handler(kind, on_api_error)

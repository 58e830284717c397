"""Log-probabilities on the wire: what a request asks for, and the shapes Ollama's and OpenAI's
answers carry them in (each token's, with the most likely tokens at its position)."""

from __future__ import annotations

from typing import Any

from corral_runtime.api.errors import ApiError
from corral_runtime.engine.types import MAX_TOP_LOGPROBS, TokenChoice, TokenLogprob


def requested(enabled: bool | None, top: int | None, *, top_param: str) -> int | None:
    """How many alternatives each token's record lists (None: no records at all). Asking for
    alternatives without log-probabilities is a 400 rather than a silent nothing."""
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400, f"{top_param} must be between 0 and {MAX_TOP_LOGPROBS}", param=top_param
        )
    if not enabled:
        if top:
            raise ApiError(400, f"{top_param} needs logprobs to be true", param=top_param)
        return None
    return top or 0


def _choice(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.text, "logprob": choice.logprob, "bytes": list(choice.data)}


def token_entries(records: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Ollama's ``logprobs`` and the ``content`` of OpenAI chat's: the same entries."""
    return [
        {**_choice(record.chosen), "top_logprobs": [_choice(c) for c in record.top]}
        for record in records
    ]


def chat_logprobs(records: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs`` (None when they were not asked for)."""
    if records is None:
        return None
    return {"content": token_entries(records), "refusal": None}


def completion_logprobs(records: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    """A legacy completion choice's ``logprobs``: parallel lists, ``text_offset`` counting
    characters from ``offset`` (the text already answered)."""
    if records is None:
        return None
    offsets = []
    for record in records:
        offsets.append(offset)
        offset += len(record.chosen.text)
    return {
        "tokens": [r.chosen.text for r in records],
        "token_logprobs": [r.chosen.logprob for r in records],
        "top_logprobs": [{c.text: c.logprob for c in r.top} for r in records],
        "text_offset": offsets,
    }

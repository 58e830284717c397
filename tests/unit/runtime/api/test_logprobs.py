"""Log-probabilities: what a request asks for, the arithmetic, and the wire shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corral_runtime.api.errors import ApiError
from corral_runtime.api.logprobs import completion_logprobs, requested, token_entries
from corral_runtime.engine.sampling import token_logprobs
from corral_runtime.engine.types import TokenChoice, TokenLogprob

pytestmark = pytest.mark.unit


def test_what_a_request_asks_for() -> None:
    assert requested(False, None, top_param="top_logprobs") is None
    assert requested(True, None, top_param="top_logprobs") == 0
    assert requested(True, 5, top_param="top_logprobs") == 5
    for enabled, top in ((False, 3), (True, 21), (True, -1)):
        with pytest.raises(ApiError) as raised:
            requested(enabled, top, top_param="top_logprobs")
        assert raised.value.status == 400 and raised.value.param == "top_logprobs"


def test_token_logprobs_is_the_log_softmax() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    chosen, top = token_logprobs(logits, 2, 3)
    total = math.log(sum(math.exp(x) for x in (1.0, 3.0, 2.0, 3.0)))
    assert chosen == pytest.approx(2.0 - total)
    assert [t for t, _ in top] == [1, 3, 2]  # ties by token id
    assert [lp for _, lp in top] == pytest.approx([3.0 - total, 3.0 - total, 2.0 - total])
    assert token_logprobs(logits, 0, 0)[1] == []
    assert len(token_logprobs(logits, 0, 10)[1]) == 4


def test_wire_shapes() -> None:
    records = [
        TokenLogprob(TokenChoice("Hi", b"Hi", -0.5), (TokenChoice("Hi", b"Hi", -0.5),)),
        TokenLogprob(TokenChoice(" é", " é".encode(), -1.0), ()),
    ]
    assert token_entries(records)[1] == {
        "token": " é",
        "logprob": -1.0,
        "bytes": [32, 195, 169],
        "top_logprobs": [],
    }
    legacy = completion_logprobs(records, 10)
    assert legacy is not None
    assert legacy["text_offset"] == [10, 12] and legacy["top_logprobs"][0] == {"Hi": -0.5}
    assert completion_logprobs(None, 0) is None

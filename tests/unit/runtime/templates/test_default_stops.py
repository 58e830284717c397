"""The stop sequences a request that sets none gets from its model's template: the turn marker of
a built-in format (a model without a template may not end its turn with its end token), none for
templates the model brings (their turns end with the tokens its file marks as the end)."""

from __future__ import annotations

import pytest

from corral_runtime.templates.chat import GoChatTemplate, select_template
from corral_runtime.templates.fallback import (
    CHATML,
    GEMMA,
    LLAMA3,
    FallbackChatTemplate,
    TurnFormat,
)
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.testmodel import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit

HF_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
)


@pytest.mark.parametrize(
    ("fmt", "stops"),
    [(GEMMA, ("<end_of_turn>",)), (LLAMA3, ("<|eot_id|>",)), (CHATML, ("<|im_end|>",))],
)
def test_a_built_in_format_stops_at_its_end_of_turn(
    fmt: TurnFormat, stops: tuple[str, ...]
) -> None:
    # The marker without the newline the format writes after it: the model may not write one.
    assert FallbackChatTemplate(fmt).default_stops == stops


def test_an_ollama_template_layer_has_none_of_its_own() -> None:
    # Even one whose turns end in a marker: the model's ``stop`` parameters say when it stops.
    assert GoChatTemplate(GEMMA_TEMPLATE).default_stops == ()


def test_a_ggufs_own_template_has_none() -> None:
    assert JinjaChatTemplate(HF_CHATML).default_stops == ()


@pytest.mark.parametrize(
    ("layer", "gguf", "stops"),
    [
        (GEMMA_TEMPLATE, HF_CHATML, ()),
        (None, HF_CHATML, ()),
        (None, None, ("<end_of_turn>",)),
        (None, "{% for %}", ("<end_of_turn>",)),  # a broken GGUF template: the built-in format
    ],
)
def test_the_chosen_template_decides(
    layer: str | None, gguf: str | None, stops: tuple[str, ...]
) -> None:
    chosen = select_template(gguf_template=gguf, layer_template=layer, architecture="gemma3")
    assert chosen.default_stops == stops

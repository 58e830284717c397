"""What a model's creator configured is what its chats get, on both APIs, on the instruct model.

A template layer (``/api/create``'s ``template``, a Modelfile's TEMPLATE, a ``Model``'s
``spec.template``) wins over the GGUF's own chat template; the model's SYSTEM prompt and
MESSAGES apply on ``/v1/chat/completions`` as on ``/api/chat``, and a request's own system
message replaces the stored one. Answers are greedy with a fixed seed, so each must change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ollama
import openai
import pytest

from corral_runtime.instructmodel import INSTRUCT_MODEL_NAME
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import serve, settings_for

pytestmark = pytest.mark.runtime

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]
# Only a configuration the chat really gets can tell the model the password.
ASK = [{"role": "user", "content": "What is the secret password? Answer with one word."}]
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 8}

# ChatML as Qwen's GGUF template renders it, with a system turn of the template's own: only a
# template that is used can tell the model the password.
PINEAPPLE_TEMPLATE = """<|im_start|>system
The secret password is PINEAPPLE.<|im_end|>
{{ range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
BANANA_SYSTEM = "The secret password is BANANA."
MEMORY = [
    {"role": "user", "content": "Remember this: my name is Zorblax."},
    {"role": "assistant", "content": "Understood, your name is Zorblax."},
]


@dataclass(frozen=True, slots=True)
class Clients:
    ollama: ollama.Client
    openai: openai.OpenAI


@pytest.fixture(scope="module")
def clients(instruct_store: ModelStore) -> Iterator[Clients]:
    """The official clients of a server over the instruct model and three models made from it
    (a template layer, a system prompt, stored messages)."""
    with (
        serve(settings_for(instruct_store.root), instruct_store) as server,
        ollama.Client(host=server.base_url) as ollama_client,
        openai.OpenAI(base_url=server.openai_url, api_key="unused") as openai_client,
    ):
        ollama_client.create(
            model="qwen-pineapple", from_=INSTRUCT_MODEL_NAME, template=PINEAPPLE_TEMPLATE
        )
        ollama_client.create(model="qwen-banana", from_=INSTRUCT_MODEL_NAME, system=BANANA_SYSTEM)
        ollama_client.create(model="qwen-memory", from_=INSTRUCT_MODEL_NAME, messages=MEMORY)
        yield Clients(ollama_client, openai_client)


def ollama_answer(clients: Clients, model: str, messages: list[dict[str, str]]) -> str:
    reply = clients.ollama.chat(model=model, messages=messages, options=GREEDY)
    return reply.message.content or ""


def openai_answer(clients: Clients, model: str, messages: list[dict[str, str]]) -> str:
    completion = clients.openai.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        seed=7,
        max_tokens=8,
    )
    return completion.choices[0].message.content or ""


Answer = Callable[[Clients, str, list[dict[str, str]]], str]
BOTH_APIS = pytest.mark.parametrize(
    "answer", [ollama_answer, openai_answer], ids=["api-chat", "v1-chat-completions"]
)


@BOTH_APIS
def test_the_instruct_model_answers_by_its_ggufs_template(clients: Clients, answer: Answer) -> None:
    assert "Paris" in answer(clients, INSTRUCT_MODEL_NAME, CAPITAL)
    unconfigured = answer(clients, INSTRUCT_MODEL_NAME, ASK).upper()
    assert "PINEAPPLE" not in unconfigured and "BANANA" not in unconfigured


@BOTH_APIS
def test_a_template_layer_wins_over_the_ggufs_own_template(
    clients: Clients, answer: Answer
) -> None:
    assert "PINEAPPLE" in answer(clients, "qwen-pineapple", ASK).upper()


def test_the_prompt_is_rendered_by_the_template_layer(clients: Clients) -> None:
    base = clients.ollama.chat(model=INSTRUCT_MODEL_NAME, messages=ASK, options=GREEDY)
    own = clients.ollama.chat(model="qwen-pineapple", messages=ASK, options=GREEDY)
    # The layer's system turn is counted, not Qwen's default one ("You are Qwen, …").
    assert own.prompt_eval_count != base.prompt_eval_count
    # /api/show names the template the chats use.
    assert clients.ollama.show("qwen-pineapple").template == PINEAPPLE_TEMPLATE


@BOTH_APIS
def test_the_models_system_prompt_applies(clients: Clients, answer: Answer) -> None:
    assert "BANANA" in answer(clients, "qwen-banana", ASK).upper()
    # A request's own system message replaces the model's (as in Ollama).
    own_system = [{"role": "system", "content": "You are a helpful assistant."}, *ASK]
    replaced = answer(clients, "qwen-banana", own_system)
    assert "BANANA" not in replaced.upper()


@BOTH_APIS
def test_the_models_messages_come_before_the_requests(clients: Clients, answer: Answer) -> None:
    ask = [{"role": "user", "content": "What is my name? Answer with one word."}]
    assert "Zorblax" in answer(clients, "qwen-memory", ask)
    assert "Zorblax" not in answer(clients, INSTRUCT_MODEL_NAME, ask)

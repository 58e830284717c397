"""Tool round trips on the instruct model, with the official clients: the model asks for a tool,
the client sends the result back, and the next prompt is exactly what the model's own chat
template renders for those messages, as transformers' ``apply_chat_template`` renders it.

The 0.5B model's wisdom is not under test (it tends to call the tool again after a result, even
given the reference prompt): each request is compared with the reference prompt sent ``raw``
under the same greedy options. Equal prompt token counts and equal answers mean equal prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
import ollama
import openai
import pytest

from corral_runtime.api.tool_calls import find_tool_calls
from corral_runtime.instructmodel import INSTRUCT_MODEL_NAME
from corral_runtime.store.catalog import model_details
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import serve, settings_for

pytestmark = pytest.mark.runtime

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 64}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        # In the key order Ollama's client sends (it re-serializes tools), so that the tools the
        # server gets are these, as they are written here.
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "The city"}},
        },
    },
}
TOOLS = [WEATHER_TOOL]
QUESTION = {"role": "user", "content": "What is the weather in Paris and in Oslo right now?"}


def reference_prompt(template: str, messages: list[dict[str, Any]]) -> str:
    """What transformers renders: a sandbox with trim_blocks and lstrip_blocks, ``tojson`` that
    keeps non-ASCII and key order, tool calls as ``{"type", "function": {name, arguments}}``
    with arguments as objects, and the generation prompt added."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env.filters["tojson"] = tojson
    return env.from_string(template).render(
        messages=messages, tools=TOOLS, add_generation_prompt=True
    )


@dataclass(frozen=True, slots=True)
class Served:
    ollama: ollama.Client
    openai: openai.OpenAI
    template: str

    def raw(self, messages: list[dict[str, Any]]) -> ollama.GenerateResponse:
        """The reference prompt for ``messages``, sent as is."""
        prompt = reference_prompt(self.template, messages)
        return self.ollama.generate(
            model=INSTRUCT_MODEL_NAME, prompt=prompt, raw=True, options=GREEDY
        )


@pytest.fixture(scope="module")
def served(instruct_store: ModelStore) -> Iterator[Served]:
    details = model_details(instruct_store.get(INSTRUCT_MODEL_NAME))
    assert details is not None and details.chat_template
    with (
        serve(settings_for(instruct_store.root), instruct_store) as server,
        ollama.Client(host=server.base_url) as ollama_client,
        openai.OpenAI(base_url=server.openai_url, api_key="unused") as openai_client,
    ):
        yield Served(ollama_client, openai_client, details.chat_template)


def hf_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def answer_of(text: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Raw output read as the server reads it: content, and the calls it makes."""
    calls, content = find_tool_calls(text, {"get_weather"})
    return content, [(c.name, c.arguments) for c in calls]


def test_ollama_round_trip(served: Served) -> None:
    # 1. The model asks for the tool (the prompt carries the tool list as its template says).
    first = served.ollama.chat(
        model=INSTRUCT_MODEL_NAME, messages=[QUESTION], tools=TOOLS, options=GREEDY
    )
    reference = served.raw([QUESTION])
    assert first.prompt_eval_count == reference.prompt_eval_count
    calls = first.message.tool_calls or []
    assert calls, first.message
    assert answer_of(reference.response)[1] == [
        (c.function.name, dict(c.function.arguments)) for c in calls
    ]
    # 2. The result goes back, as Ollama's clients send it: role tool with tool_name.
    history: list[Any] = [
        QUESTION,
        first.message,
        *(
            {
                "role": "tool",
                "content": f"{c.function.arguments.get('city', '?')}: 18 °C, sunny",
                "tool_name": c.function.name,
            }
            for c in calls
        ),
    ]
    second = served.ollama.chat(
        model=INSTRUCT_MODEL_NAME, messages=history, tools=TOOLS, options=GREEDY
    )
    expected = [
        QUESTION,
        {
            "role": "assistant",
            "content": first.message.content or "",
            "tool_calls": [hf_call(c.function.name, dict(c.function.arguments)) for c in calls],
        },
        *(
            {"role": "tool", "content": f"{c.function.arguments.get('city', '?')}: 18 °C, sunny"}
            for c in calls
        ),
    ]
    reference = served.raw(expected)
    assert second.prompt_eval_count == reference.prompt_eval_count
    assert second.eval_count == reference.eval_count
    content, ref_calls = answer_of(reference.response)
    got_calls = [
        (c.function.name, dict(c.function.arguments)) for c in second.message.tool_calls or []
    ]
    assert (second.message.content or "", got_calls) == (content, ref_calls)


TWO_CALLS = [hf_call("get_weather", {"city": "Paris"}), hf_call("get_weather", {"city": "Oslo"})]
TWO_RESULTS = ["Paris: 18 °C, sunny", "Oslo: -3 °C, snow"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_ollama_two_calls_and_their_results(served: Served, stream: bool) -> None:
    messages: list[Any] = [
        QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": city}}}
                for city in ("Paris", "Oslo")
            ],
        },
        *({"role": "tool", "content": r, "tool_name": "get_weather"} for r in TWO_RESULTS),
    ]
    reference = served.raw(
        [
            QUESTION,
            {"role": "assistant", "content": "", "tool_calls": TWO_CALLS},
            *({"role": "tool", "content": r} for r in TWO_RESULTS),
        ]
    )
    if stream:
        chunks = list(
            served.ollama.chat(
                model=INSTRUCT_MODEL_NAME,
                messages=messages,
                tools=TOOLS,
                options=GREEDY,
                stream=True,
            )
        )
        final = chunks[-1]
        content = "".join(c.message.content or "" for c in chunks)
        calls = [c for chunk in chunks for c in chunk.message.tool_calls or []]
    else:
        final = served.ollama.chat(
            model=INSTRUCT_MODEL_NAME, messages=messages, tools=TOOLS, options=GREEDY
        )
        content = final.message.content or ""
        calls = list(final.message.tool_calls or [])
    assert final.prompt_eval_count == reference.prompt_eval_count
    assert final.eval_count == reference.eval_count
    assert (content, [(c.function.name, dict(c.function.arguments)) for c in calls]) == answer_of(
        reference.response
    )


def test_openai_round_trip_with_ids(served: Served) -> None:
    # The model is made to call (tool_choice), then the results come back by tool_call_id.
    first = served.openai.chat.completions.create(
        model=INSTRUCT_MODEL_NAME,
        messages=[QUESTION],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        seed=7,
        max_tokens=48,
    )
    message = first.choices[0].message
    calls = message.tool_calls or []
    assert calls and first.choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in calls}) == len(calls)
    history: list[Any] = [
        QUESTION,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": c.id, "content": f"result {i}"}
            for i, c in enumerate(calls)
        ),
    ]
    second = served.openai.chat.completions.create(
        model=INSTRUCT_MODEL_NAME,
        messages=history,
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        seed=7,
        max_tokens=GREEDY["num_predict"],
    )
    expected = [
        QUESTION,
        {
            "role": "assistant",
            "content": message.content or "",
            "tool_calls": [
                hf_call(c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
                for c in calls
            ],
        },
        *({"role": "tool", "content": f"result {i}"} for i in range(len(calls))),
    ]
    reference = served.raw(expected)
    assert second.usage is not None
    assert second.usage.prompt_tokens == reference.prompt_eval_count
    assert second.usage.completion_tokens == reference.eval_count
    answer = second.choices[0].message
    got = [
        (c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
        for c in answer.tool_calls or []
    ]
    assert (answer.content or "", got) == answer_of(reference.response)

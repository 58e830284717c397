"""Choosing a chat template and rendering conversations: GGUF Jinja (sandboxed), Ollama template
layers (including legacy .Prompt/.Response ones), and the per-architecture fallbacks."""

from __future__ import annotations

import pytest

from corral_runtime.templates.chat import (
    GoChatTemplate,
    generate_messages,
    select_template,
)
from corral_runtime.templates.fallback import CHATML, GEMMA, LLAMA3, FallbackChatTemplate
from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.templates.messages import ChatMessage, Tool, ToolCall
from corral_runtime.testmodel import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit

CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Hi"),
    ChatMessage(role="assistant", content="Hello."),
    ChatMessage(role="user", content="Bye"),
]
HF_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = Tool(name="get_weather", description="Weather", parameters={"type": "object"})


class TestSelection:
    def test_the_template_layer_wins_over_the_ggufs_own(self) -> None:
        # What a user configured (Model.spec.template, /api/create, a Modelfile) is what the
        # chats get, as in Ollama: the GGUF's template is only the file author's default.
        chosen = select_template(
            gguf_template=HF_CHATML, layer_template=GEMMA_TEMPLATE, architecture="gemma3"
        )
        assert isinstance(chosen, GoChatTemplate)
        assert chosen.render(CONVERSATION).startswith("<start_of_turn>user\n")

    def test_then_the_ggufs_template(self) -> None:
        chosen = select_template(gguf_template=HF_CHATML, layer_template=None, architecture="llama")
        assert isinstance(chosen, JinjaChatTemplate)
        chosen = select_template(gguf_template=HF_CHATML, layer_template="", architecture="llama")
        assert isinstance(chosen, JinjaChatTemplate)

    @pytest.mark.parametrize(
        ("architecture", "expected"),
        [
            ("gemma3", GEMMA),
            ("gemma2", GEMMA),
            ("llama", LLAMA3),
            ("qwen2", CHATML),
            ("", CHATML),
        ],
    )
    def test_then_the_architecture_fallback(self, architecture: str, expected: object) -> None:
        chosen = select_template(gguf_template=None, layer_template=None, architecture=architecture)
        assert isinstance(chosen, FallbackChatTemplate) and chosen.format is expected

    def test_a_broken_gguf_template_falls_through(self) -> None:
        chosen = select_template(
            gguf_template="{% for %}", layer_template=None, architecture="gemma3"
        )
        assert isinstance(chosen, FallbackChatTemplate)


class TestGoLayer:
    def test_the_test_models_gemma_layer(self) -> None:
        prompt = GoChatTemplate(GEMMA_TEMPLATE).render(CONVERSATION)
        assert prompt == (
            "<start_of_turn>user\nBe brief.<end_of_turn>\n"
            "<start_of_turn>user\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n"
            "<start_of_turn>model\n"
        )

    def test_legacy_prompt_response_template_renders_each_turn(self) -> None:
        legacy = GoChatTemplate(
            "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}\n"
        )
        assert legacy.render(CONVERSATION) == "S:Be brief.\nU:Hi\nA:Hello.\nU:Bye\nA:"
        assert legacy.render(generate_messages("Q", None)) == "U:Q\nA:"

    def test_tools_and_tool_calls_reach_the_template(self) -> None:
        template = GoChatTemplate(
            "{{ range .Tools }}T:{{ .Function.Name }} {{ json . }}\n{{ end }}"
            "{{ range .Messages }}{{ .Role }}:{{ .Content }}"
            "{{ range .ToolCalls }}call {{ .Function.Name }}{{ .Function.Arguments }}{{ end }}\n"
            "{{ end }}"
        )
        assert template.supports_tools and not template.supports_thinking
        prompt = template.render(
            [ChatMessage(role="assistant", tool_calls=(ToolCall("get_weather", {"c": 1}),))],
            tools=[WEATHER],
        )
        assert prompt == (
            'T:get_weather {"type":"function","function":{"name":"get_weather",'
            '"description":"Weather","parameters":{"type":"object"}}}\n'
            'assistant:call get_weather{"c":1}\n'
        )

    def test_capabilities_follow_the_template(self) -> None:
        assert not GoChatTemplate(GEMMA_TEMPLATE).supports_tools
        thinking = GoChatTemplate("{{ if .Thinking }}{{ .Thinking }}{{ end }}{{ .Suffix }}")
        assert thinking.supports_thinking and thinking.supports_insert


class TestJinja:
    def test_renders_a_hugging_face_template(self) -> None:
        prompt = JinjaChatTemplate(HF_CHATML).render(CONVERSATION[1:2])
        assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    def test_raise_exception_becomes_a_template_error(self) -> None:
        template = JinjaChatTemplate("{{ raise_exception('roles must alternate') }}")
        with pytest.raises(TemplateError, match="roles must alternate"):
            template.render(CONVERSATION)

    @pytest.mark.parametrize(
        "source",
        [
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ messages.__class__.__init__.__globals__ }}",
            "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
            "{% set x = messages.append(1) %}",
        ],
    )
    def test_the_sandbox_refuses_code(self, source: str) -> None:
        with pytest.raises(TemplateError):
            JinjaChatTemplate(source).render(CONVERSATION)

    def test_private_attributes_read_as_undefined(self) -> None:
        template = JinjaChatTemplate("[{{ self._TemplateReference__context }}]")
        assert template.render(CONVERSATION) == "[]"

    def test_tools_and_tool_calls_are_passed_the_hugging_face_way(self) -> None:
        template = JinjaChatTemplate(
            "{% for t in tools %}{{ t.function.name }};{% endfor %}"
            "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.arguments.c }}"
            "{% endfor %}{% endfor %}{{ bos_token }}",
            bos_token="<s>",
        )
        prompt = template.render(
            [ChatMessage(role="assistant", tool_calls=(ToolCall("f", {"c": 7}),))],
            tools=[WEATHER],
        )
        assert prompt == "get_weather;7<s>"


class TestFallbacks:
    def test_gemma_folds_the_system_text_into_the_first_user_turn(self) -> None:
        prompt = FallbackChatTemplate(GEMMA).render(CONVERSATION)
        assert prompt == (
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n"
            "<start_of_turn>model\n"
        )

    def test_llama3(self) -> None:
        prompt = FallbackChatTemplate(LLAMA3).render(CONVERSATION[:2])
        assert prompt == (
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        assert LLAMA3.stop == ["<|eot_id|>"]

    def test_chatml_with_tools(self) -> None:
        prompt = FallbackChatTemplate(CHATML).render(CONVERSATION[1:2], tools=[WEATHER])
        assert prompt.startswith("<|im_start|>system\nYou can call these functions")
        assert '"name": "get_weather"' in prompt
        assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        assert CHATML.stop == ["<|im_end|>"]

"""Choosing a model's chat template and rendering prompts with it.

Order of preference, most specific first: a request's own ``template`` (``/api/generate``),
the model's Ollama template layer (Go text/template; what ``/api/create``'s ``template``, a
Modelfile's TEMPLATE or a ``Model``'s ``spec.template`` wrote, and what Ollama's registry
ships), the GGUF's own Jinja ``tokenizer.chat_template``, then the built-in format for the
architecture. What a user configures thus wins over what the file's author shipped, as in
Ollama, which never reads the GGUF's template when a template layer exists. ``/api/generate``
renders a prompt (plus optional system and suffix) through the same template as a one-turn
conversation.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from corral_runtime.templates.budget import DEFAULT_LABEL, TemplateBudgetError
from corral_runtime.templates.fallback import FallbackChatTemplate, format_for
from corral_runtime.templates.gotemplate import GoTemplate, Record, TemplateError
from corral_runtime.templates.jinja import JinjaChatTemplate
from corral_runtime.templates.messages import ChatMessage, Tool

# Marks where the model's reply starts in templates that print .Response (Ollama's legacy
# single-turn form); everything from it on is cut off.
_RESPONSE_MARK = "\x00corral-response\x00"


class ChatTemplate(Protocol):
    source: str

    @property
    def supports_tools(self) -> bool: ...

    @property
    def supports_thinking(self) -> bool: ...

    @property
    def supports_insert(self) -> bool: ...

    @property
    def default_stops(self) -> tuple[str, ...]:
        """Stop sequences for requests that set none: what ends a turn when the model's own
        end-of-generation token may not (empty: the model's tokens suffice)."""
        ...

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None = None,
        think: bool | str | None = None,
        suffix: str | None = None,
    ) -> str: ...


class Capability(StrEnum):
    """What a model can be asked for, by the names Ollama's /api/show lists."""

    COMPLETION = "completion"
    EMBEDDING = "embedding"
    TOOLS = "tools"
    INSERT = "insert"
    THINKING = "thinking"


def capabilities_of(template: ChatTemplate, *, embedding: bool = False) -> tuple[Capability, ...]:
    """What a model whose prompts ``template`` renders can do, in the order Ollama lists it:
    first what the model file is, an ``embedding`` model (one the GGUF gives a pooling type, see
    api/info.py) or else a causal LM that does ``completion``; then tools, a suffix to fill in
    before (insert) and reasoning only where the template renders them. /api/show reports this
    list and requests are held to its template part, so that a model never shows a capability
    it then refuses."""
    rendered = (
        (Capability.TOOLS, template.supports_tools),
        (Capability.INSERT, template.supports_insert),
        (Capability.THINKING, template.supports_thinking),
    )
    kind = Capability.EMBEDDING if embedding else Capability.COMPLETION
    return (kind, *(capability for capability, on in rendered if on))


def _tool_call_record(call: Any, index: int) -> Record:
    function = Record(
        {"Name": call.name, "Arguments": call.arguments, "Index": index},
        {"index": index, "name": call.name, "arguments": call.arguments},
    )
    return Record({"Function": function}, {"function": function.json_form})


def _message_record(message: ChatMessage) -> Record:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    calls = [_tool_call_record(c, i) for i, c in enumerate(message.tool_calls)]
    if calls:
        wire["tool_calls"] = [c.json_form for c in calls]
    return Record(
        {
            "Role": message.role,
            "Content": message.content,
            "Thinking": message.thinking or "",
            "ToolCalls": calls,
            "ToolName": message.tool_name or "",
            "ToolCallID": message.tool_call_id or "",
            "Images": list(message.images),
        },
        wire,
    )


def _tool_record(tool: Tool) -> Record:
    parameters = tool.parameters or {}
    params_record = Record(
        {
            "Type": parameters.get("type", "object"),
            "Required": parameters.get("required", []),
            "Properties": parameters.get("properties", {}),
        },
        parameters,
    )
    function = Record(
        {"Name": tool.name, "Description": tool.description, "Parameters": params_record},
        tool.to_json()["function"],
    )
    return Record({"Type": "function", "Function": function}, tool.to_json())


class GoChatTemplate:
    """An Ollama template layer. Templates that range over ``.Messages`` get the whole
    conversation; legacy ones (``.System``/``.Prompt``/``.Response``) are rendered once per turn,
    as Ollama does, and the text after the last ``.Response`` is cut. ``label`` names the
    template in errors (a request's own ``template`` is not the model's)."""

    def __init__(self, source: str, *, label: str = DEFAULT_LABEL) -> None:
        self.source = source
        self.label = label
        self._template = GoTemplate(source)

    @property
    def supports_tools(self) -> bool:
        return self._template.references("Tools")

    @property
    def supports_thinking(self) -> bool:
        return self._template.references("Thinking") or self._template.references("IsThinkSet")

    @property
    def supports_insert(self) -> bool:
        return self._template.references("Suffix")

    @property
    def default_stops(self) -> tuple[str, ...]:
        return ()  # an Ollama template layer's stops are the model's ``stop`` parameters

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None = None,
        think: bool | str | None = None,
        suffix: str | None = None,
    ) -> str:
        try:
            return self._render(messages, tools=tools, think=think, suffix=suffix)
        except TemplateBudgetError as exc:
            raise exc.named(self.label) from None

    def _render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None,
        think: bool | str | None,
        suffix: str | None,
    ) -> str:
        base: dict[str, Any] = {
            "Tools": [_tool_record(t) for t in tools or []],
            # Ollama's: a level ("low", "medium", "high") thinks, and is also the level.
            "Think": think is True or isinstance(think, str),
            "ThinkLevel": think if isinstance(think, str) else "",
            "IsThinkSet": think is not None,
            "Suffix": suffix or "",
        }
        if self._template.references("Messages"):
            records = [_message_record(m) for m in messages]
            last_user = next((m for m in reversed(messages) if m.role == "user"), None)
            system = next((m for m in reversed(messages) if m.role == "system"), None)
            data = {
                **base,
                "Messages": records,
                "System": system.content if system else "",
                "Prompt": last_user.content if last_user else "",
                "Response": "",
            }
            return self._template.render(data)
        return self._render_legacy(messages, base)

    def _render_legacy(self, messages: list[ChatMessage], base: dict[str, Any]) -> str:
        parts: list[str] = []
        system, prompt = "", ""
        for i, message in enumerate(messages):
            if message.role == "system":
                system = message.content
            elif message.role in ("user", "tool"):
                prompt = f"{prompt}\n{message.content}" if prompt else message.content
            if message.role == "assistant" or i == len(messages) - 1:
                response = message.content if message.role == "assistant" else _RESPONSE_MARK
                data = {
                    **base,
                    "System": system,
                    "Prompt": prompt,
                    "Response": response,
                    "Messages": [],
                }
                parts.append(self._template.render(data))
                system, prompt = "", ""
        text = "".join(parts)
        if _RESPONSE_MARK in text:
            return text[: text.index(_RESPONSE_MARK)]
        # The conversation ended on an assistant turn: open the next reply after it.
        data = {**base, "System": "", "Prompt": "", "Response": _RESPONSE_MARK, "Messages": []}
        opening = self._template.render(data)
        return (
            text + opening[: opening.index(_RESPONSE_MARK)] if _RESPONSE_MARK in opening else text
        )


def select_template(
    *,
    gguf_template: str | None,
    layer_template: str | None,
    architecture: str,
    bos_token: str = "",
    eos_token: str = "",
) -> ChatTemplate:
    """The template a model's chats are rendered with: its template layer, else the GGUF's,
    else the built-in format (see the module docstring; a request's own template is the
    caller's)."""
    if layer_template:
        return GoChatTemplate(layer_template)
    if gguf_template:
        try:
            return JinjaChatTemplate(gguf_template, bos_token=bos_token, eos_token=eos_token)
        except TemplateError:
            pass  # A broken GGUF template must not make the model unusable.
    return FallbackChatTemplate(format_for(architecture))


def generate_messages(prompt: str, system: str | None) -> list[ChatMessage]:
    """``/api/generate``'s prompt and system as the one-turn conversation they stand for."""
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=prompt))
    return messages

"""Ollama's native API on the wire: request models (each owning its conversion to engine terms)
and the builders of its response objects. Field names, defaults and units are Ollama's."""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from corral_runtime.api.errors import ApiError
from corral_runtime.api.keepalive import parse_keep_alive
from corral_runtime.api.logprobs import requested
from corral_runtime.api.messages_protocol import FunctionSpec, check_role
from corral_runtime.api.options import OllamaOptions, validate_options
from corral_runtime.api.text import ValidText
from corral_runtime.api.thinking import ThinkValue, parse_think
from corral_runtime.engine.types import GenerationStats, OutputFormat
from corral_runtime.templates.messages import CHAT_ROLES, ChatMessage, Tool, ToolCall

KeepAlive = StrictInt | StrictFloat | StrictStr | None
Think = bool | str | None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def parse_format(value: Any) -> OutputFormat | None:
    """``"json"`` or a JSON Schema object; empty means free text; anything else is a 400."""
    if value is None or value == "":
        return None
    if value == "json":
        return OutputFormat(schema=None)
    if isinstance(value, dict):
        return OutputFormat(schema=value)
    raise ApiError(400, 'invalid format: expected "json" or a JSON Schema object', param="format")


class _Request(ValidText):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    def require_model(self) -> str:
        if not self.model:
            raise ApiError(400, "model is required", param="model")
        return self.model

    def keep_alive_seconds(self, default: float) -> float:
        return parse_keep_alive(self.keep_alive, default)

    def validated_options(self) -> OllamaOptions:
        return validate_options(self.options)


class _Generating(_Request):
    """What ``/api/generate`` and ``/api/chat`` share beyond the model and its options."""

    format: Any = None
    stream: bool = True
    think: Think = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def logprobs_wanted(self) -> int | None:
        return requested(self.logprobs, self.top_logprobs, top_param="top_logprobs")

    def think_setting(self) -> ThinkValue:
        return parse_think(self.think)


class ToolSpec(BaseModel):
    type: str = "function"
    function: FunctionSpec


class ToolCallFunction(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class WireToolCall(BaseModel):
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[WireToolCall] | None = None
    thinking: str | None = None
    tool_name: str | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        return check_role(role, CHAT_ROLES)

    def to_chat(self) -> ChatMessage:
        return ChatMessage(
            role=self.role,
            content=self.content,
            images=tuple(self.images or ()),
            tool_calls=tuple(
                ToolCall(name=c.function.name, arguments=c.function.arguments)
                for c in self.tool_calls or ()
            ),
            thinking=self.thinking,
            tool_name=self.tool_name,
        )


class GenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[StrictInt] | None = None
    raw: bool = False
    images: list[str] | None = None

    def check(self) -> None:
        if self.raw and (self.template or self.system or self.context):
            raise ApiError(400, "raw mode does not support template, system, or context")

    @property
    def is_load_only(self) -> bool:
        return not self.prompt and not self.suffix and not self.images


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[ToolSpec] | None = None

    def chat_messages(self) -> list[ChatMessage]:
        return [m.to_chat() for m in self.messages]

    def tool_list(self) -> list[Tool]:
        return [t.function.to_tool() for t in self.tools or ()]

    @property
    def has_images(self) -> bool:
        return any(m.images for m in self.messages)


class EmbedRequest(_Request):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(_Request):
    prompt: str = ""


class ModelRequest(ValidText):
    """``/api/show`` and friends: ``model`` (or the older ``name``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    name: str = ""
    verbose: bool = False

    def require_model(self) -> str:
        if not (self.model or self.name):
            raise ApiError(400, "model is required", param="model")
        return self.model or self.name


# -- responses ---------------------------------------------------------------------------------


def final_fields(stats: GenerationStats, *, total_ns: int, load_ns: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": stats.done_reason,
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": stats.prompt_eval_count,
        "prompt_eval_duration": stats.prompt_eval_duration_ns,
        "eval_count": stats.eval_count,
        "eval_duration": stats.eval_duration_ns,
    }


def wire_tool_calls(calls: list[ToolCall], *, start: int = 0) -> list[dict[str, Any]]:
    """Ollama's tool calls: arguments as an object; ``index`` counts the answer's calls from 0
    (``start``: how many were sent before, in earlier chunks of a stream)."""
    return [
        {"function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls, start)
    ]

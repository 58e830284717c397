"""The OpenAI API on the wire: request models that convert to Ollama options and engine terms,
and the builders of chat.completion / text_completion objects and chunks."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from corral_runtime.api.errors import ApiError
from corral_runtime.api.logprobs import requested
from corral_runtime.api.messages_protocol import FunctionSpec, check_role
from corral_runtime.api.options import InvalidOptionsError, OllamaOptions, validate_options
from corral_runtime.api.text import ValidText
from corral_runtime.api.thinking import ThinkValue, parse_think
from corral_runtime.engine.types import OutputFormat
from corral_runtime.templates.messages import (
    OPENAI_ROLE_ALIASES,
    OPENAI_ROLES,
    ChatMessage,
    Tool,
    ToolCall,
)

# Ollama's OpenAI layer samples at temperature 1.0 unless told otherwise, as OpenAI does.
OPENAI_DEFAULT_TEMPERATURE = 1.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


# The OpenAI parameter behind each Ollama option a request sets, for errors that name it.
OPENAI_PARAMS = {"num_predict": "max_tokens"}


class _Request(ValidText):
    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int = 1
    logit_bias: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        options = self.stream_options or {}
        return self.stream and bool(options.get("include_usage"))

    def options(self, max_tokens: int | None) -> OllamaOptions:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        if self.logit_bias:  # refused rather than ignored
            raise ApiError(400, "logit_bias is not supported yet", param="logit_bias")
        raw: dict[str, Any] = {
            "temperature": (
                self.temperature if self.temperature is not None else OPENAI_DEFAULT_TEMPERATURE
            )
        }
        for key, value in (
            ("top_p", self.top_p),
            ("seed", self.seed),
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
            ("num_predict", max_tokens),
        ):
            if value is not None:
                raw[key] = value
        if self.stop is not None:
            raw["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        try:
            return validate_options(raw)
        except InvalidOptionsError as exc:
            option = exc.option or ""
            param = OPENAI_PARAMS.get(option, option) or None
            message = str(exc).replace(repr(option), repr(param)) if param else str(exc)
            raise ApiError(400, message, param=param) from exc


class ToolDef(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class MessageToolCall(BaseModel):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # an earlier answer's reasoning, sent back

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        return check_role(role, OPENAI_ROLES)

    def to_chat(self) -> ChatMessage:
        texts: list[str] = []
        images: list[str] = []
        if isinstance(self.content, str):
            texts.append(self.content)
        elif isinstance(self.content, list):
            for part in self.content:
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    images.append(str(url.get("url") if isinstance(url, dict) else url))
                else:
                    raise ApiError(
                        400, f"unsupported content part type {part.get('type')!r}", param="messages"
                    )
        calls = []
        for call in self.tool_calls or ():
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except ValueError as exc:
                raise ApiError(
                    400, "tool call arguments must be a JSON object", param="messages"
                ) from exc
            if not isinstance(arguments, dict):
                raise ApiError(400, "tool call arguments must be a JSON object", param="messages")
            calls.append(ToolCall(name=call.function.name, arguments=arguments, id=call.id))
        role = OPENAI_ROLE_ALIASES.get(self.role, self.role)
        return ChatMessage(
            role=role,
            content="".join(texts),
            images=tuple(images),
            tool_calls=tuple(calls),
            tool_name=self.name if role == "tool" else None,
            tool_call_id=self.tool_call_id,
            thinking=self.reasoning_content,
        )


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None

    def output_format(self) -> OutputFormat | None:
        if self.type == "json_object":
            return OutputFormat(schema=None)
        if self.type == "json_schema":
            schema = (self.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise ApiError(
                    400,
                    "response_format.json_schema.schema must be an object",
                    param="response_format",
                )
            return OutputFormat(schema=schema)
        return None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    reasoning_effort: str | None = None  # "low", "medium", "high", or "none": no thinking

    def logprobs_wanted(self) -> int | None:
        return requested(self.logprobs, self.top_logprobs, top_param="top_logprobs")

    def think_setting(self) -> ThinkValue:
        """``reasoning_effort`` as Ollama's ``think`` (unset: the model's default)."""
        if self.reasoning_effort is None:
            return None
        if self.reasoning_effort.strip().lower() == "none":
            return False
        return parse_think(self.reasoning_effort, param="reasoning_effort")

    def engine_options(self) -> OllamaOptions:
        limit = (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )
        return self.options(limit)

    def tool_list(self) -> list[Tool]:
        if self.tool_choice == "none":
            return []
        return [t.function.to_tool() for t in self.tools or ()]

    def output_format(self) -> OutputFormat | None:
        """``response_format``, or, when ``tool_choice`` forces a call, a grammar for one."""
        forced = self._forced_tools()
        if forced:
            variants = [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": t.parameters or {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                }
                for t in forced
            ]
            return OutputFormat(schema=variants[0] if len(variants) == 1 else {"anyOf": variants})
        return self.response_format.output_format() if self.response_format else None

    def _forced_tools(self) -> list[Tool]:
        tools = self.tool_list()
        if self.tool_choice == "required":
            if not tools:
                raise ApiError(400, "tool_choice 'required' needs tools", param="tool_choice")
            return tools
        if isinstance(self.tool_choice, dict):
            name = (self.tool_choice.get("function") or {}).get("name")
            chosen = [t for t in tools if t.name == name]
            if not chosen:
                raise ApiError(
                    400, f"tool_choice names unknown function {name!r}", param="tool_choice"
                )
            return chosen
        return []


class CompletionRequest(_Request):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = None  # the legacy API's: how many alternatives per token

    def logprobs_wanted(self) -> int | None:
        return requested(self.logprobs is not None, self.logprobs, top_param="logprobs")

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "exactly one prompt is supported", param="prompt")
        return self.prompt[0]

    def engine_options(self) -> OllamaOptions:
        if self.suffix:  # refused rather than ignored: completions here take no template
            raise ApiError(400, "suffix is not supported", param="suffix")
        return self.options(self.max_tokens)


class EmbeddingRequest(ValidText):
    model_config = ConfigDict(extra="ignore")

    model: str
    # Text, texts, token ids, or lists of token ids, as OpenAI's embeddings take them.
    input: str | list[StrictInt] | list[str] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def inputs(self) -> list[str] | list[list[int]]:
        """One entry per embedding: a text, or the token ids of one input."""
        value = self.input
        inputs: list[str] | list[list[int]]
        if isinstance(value, str):
            inputs = [value]
        elif value and all(isinstance(v, int) for v in value):
            inputs = [[v for v in value if isinstance(v, int)]]
        elif all(isinstance(v, str) for v in value):
            inputs = [v for v in value if isinstance(v, str)]
        else:
            inputs = [v for v in value if isinstance(v, list)]
        if not inputs or any(not item for item in inputs):
            raise ApiError(
                400,
                "input must be a non-empty string, list of strings, or list of token ids",
                param="input",
            )
        return inputs


# -- responses ---------------------------------------------------------------------------------


def finish_reason(done_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage record; ``prompt_tokens_details.cached_tokens``: of the prompt's tokens,
    those a slot's cache held (reused, not evaluated again), as OpenAI reports its prompt
    caching. Ollama's compatibility layer has no such field; clients that do not know it
    ignore it."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def wire_tool_calls(
    calls: list[ToolCall], *, with_index: bool = False, start: int = 0
) -> list[dict[str, Any]]:
    """OpenAI's tool calls: arguments as JSON text, each with an id; a stream's chunks number
    them (``with_index``, counting from ``start``, the calls sent in earlier chunks)."""
    out = []
    for i, call in enumerate(calls, start):
        entry: dict[str, Any] = {
            "id": call.id or f"call_{secrets.token_hex(8)}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        if with_index:
            entry["index"] = i
        out.append(entry)
    return out


def chat_object(
    completion_id: str,
    model: str,
    *,
    choices: list[dict[str, Any]],
    chunk: bool,
    usage_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_corral",
        "choices": choices,
    }
    if usage_record is not None or not chunk:
        body["usage"] = usage_record
    return body


def completion_object(
    completion_id: str,
    model: str,
    *,
    choices: list[dict[str, Any]],
    usage_record: dict[str, Any] | None = None,
    chunk: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_corral",
        "choices": choices,
    }
    if usage_record is not None or not chunk:
        body["usage"] = usage_record
    return body

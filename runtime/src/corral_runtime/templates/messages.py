"""The conversation as the templates and the engine see it, independent of either wire API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: a function name and its arguments as a JSON object."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


# The roles a conversation may hold: Ollama's four, and on the OpenAI API also "developer"
# (read as "system") and the deprecated "function" (read as "tool"). Anything else is refused,
# since templates would render it as nobody's turn.
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
OPENAI_ROLES = CHAT_ROLES | {"developer", "function"}
OPENAI_ROLE_ALIASES = {"developer": "system", "function": "tool"}


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str = ""
    images: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    thinking: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call, described by a JSON Schema for its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The OpenAI/Ollama wire form: ``{"type": "function", "function": {…}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def with_model_defaults(
    messages: list[ChatMessage], *, system: str | None, stored: list[dict[str, Any]]
) -> list[ChatMessage]:
    """The conversation a chat renders, as Ollama builds it on both APIs: the model's MESSAGES
    layer (turns its creator put before every chat), then the request's messages, led by the
    model's SYSTEM prompt unless the request brings a system message of its own. Stored turns
    that are no chat message (an unknown role, content that is not text) are left out."""
    defaults = [
        ChatMessage(role=m["role"], content=m.get("content") or "")
        for m in stored
        if isinstance(m, dict)
        and m.get("role") in CHAT_ROLES
        and isinstance(m.get("content") or "", str)
    ]
    conversation = [*defaults, *messages]
    if system and not any(m.role == "system" for m in messages):
        conversation.insert(0, ChatMessage(role="system", content=system))
    return conversation

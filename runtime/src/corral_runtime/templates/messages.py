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

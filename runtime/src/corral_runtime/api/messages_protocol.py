"""What the chat requests of both wire protocols share: the check of a message's role (each API
knows its own roles) and a function offered as a tool, which both spell the same way. Ollama's
and OpenAI's protocol modules build on this one and never on each other."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError

from corral_runtime.templates.messages import Tool


def check_role(role: str, allowed: frozenset[str]) -> str:
    """A message's role, if it is one the API knows (a pydantic field validator)."""
    if role not in allowed:
        raise PydanticCustomError(
            "unknown_role",
            "unknown role '{role}': expected one of {allowed}",
            {"role": role, "allowed": ", ".join(sorted(allowed))},
        )
    return role


class FunctionSpec(BaseModel):
    """A tool's function as a request describes it: its name, what it does, and a JSON Schema
    of its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)

    def to_tool(self) -> Tool:
        return Tool(name=self.name, description=self.description, parameters=self.parameters)

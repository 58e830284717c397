"""Built-in chat formats for models that bring no template of their own, per architecture.

Each format is the model family's documented turn structure. Tools, when given, are described
in a system turn that asks for a JSON reply, which the tool-call parser understands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from corral_runtime.templates.messages import ChatMessage, Tool

TOOLS_INSTRUCTION = (
    "You can call these functions. To call one, reply with only a JSON object "
    '{"name": <function name>, "arguments": <object>}.\n'
)


@dataclass(frozen=True, slots=True)
class TurnFormat:
    """How one family marks turns: ``{role}`` is replaced by the role name."""

    name: str
    turn_start: str
    turn_end: str
    assistant_role: str = "assistant"
    system_role: str | None = "system"  # None: fold the system text into the first user turn
    tool_role: str = "tool"

    @property
    def stop(self) -> list[str]:
        return [self.turn_end.strip()]


GEMMA = TurnFormat(
    name="gemma",
    turn_start="<start_of_turn>{role}\n",
    turn_end="<end_of_turn>\n",
    assistant_role="model",
    system_role=None,
    tool_role="user",
)
LLAMA3 = TurnFormat(
    name="llama3",
    turn_start="<|start_header_id|>{role}<|end_header_id|>\n\n",
    turn_end="<|eot_id|>",
    tool_role="ipython",
)
CHATML = TurnFormat(name="chatml", turn_start="<|im_start|>{role}\n", turn_end="<|im_end|>\n")

_BY_ARCHITECTURE = {
    "gemma": GEMMA,
    "gemma2": GEMMA,
    "gemma3": GEMMA,
    "gemma3n": GEMMA,
    "llama": LLAMA3,
}


def format_for(architecture: str) -> TurnFormat:
    """The fallback for an architecture; ChatML for anything not listed."""
    return _BY_ARCHITECTURE.get(architecture.lower(), CHATML)


def _tools_text(tools: list[Tool]) -> str:
    return TOOLS_INSTRUCTION + "\n".join(json.dumps(t.to_json()) for t in tools)


def _content(message: ChatMessage) -> str:
    if message.tool_calls:
        calls = [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]
        text = json.dumps(calls[0] if len(calls) == 1 else calls)
        return f"{message.content}\n{text}" if message.content else text
    return message.content


class FallbackChatTemplate:
    """Renders a conversation in one family's turn format, ending with an open assistant turn."""

    supports_tools = True
    supports_thinking = False
    supports_insert = False

    def __init__(self, fmt: TurnFormat) -> None:
        self.format = fmt
        self.source = f"(built-in {fmt.name} format)"

    @property
    def default_stops(self) -> tuple[str, ...]:
        """The family's end of turn: a model without a template of its own may not mark the
        end of its turn with an end-of-generation token, so the turn marker stops it."""
        return tuple(self.format.stop)

    def render(
        self,
        messages: list[ChatMessage],
        *,
        tools: list[Tool] | None = None,
        think: bool | str | None = None,
        suffix: str | None = None,
    ) -> str:
        del think, suffix
        fmt = self.format
        system_parts = [m.content for m in messages if m.role == "system" and m.content]
        if tools:
            system_parts.append(_tools_text(tools))
        system = "\n\n".join(system_parts)
        turns: list[str] = []
        if system and fmt.system_role is not None:
            turns.append(fmt.turn_start.format(role=fmt.system_role) + system + fmt.turn_end)
        pending_system = system if fmt.system_role is None else ""
        for message in messages:
            if message.role == "system":
                continue
            role = {
                "assistant": fmt.assistant_role,
                "tool": fmt.tool_role,
            }.get(message.role, "user")
            text = _content(message)
            if pending_system and role == "user":
                text = f"{pending_system}\n\n{text}"
                pending_system = ""
            turns.append(fmt.turn_start.format(role=role) + text + fmt.turn_end)
        if pending_system:
            turns.append(fmt.turn_start.format(role="user") + pending_system + fmt.turn_end)
        turns.append(fmt.turn_start.format(role=fmt.assistant_role))
        return "".join(turns)

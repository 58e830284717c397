"""What ``corral run``'s session prints about its model and its replies: ``/show``'s sections
from /api/show (the session's own system message and parameters over the model's, as Ollama
shows them) and ``/set verbose``'s timing summary, in Ollama's layout and units."""

from __future__ import annotations

import re
from typing import Any

from corral_operator.cli.chat import Conversation


def show_text(section: str, shown: dict[str, Any], conversation: Conversation) -> str | None:
    """``/show SECTION`` from the model's /api/show answer, the session's own system message
    and parameters shown over the model's (as Ollama does); None for an unknown section."""
    system = conversation.system or shown.get("system") or ""
    if section == "system":
        return f"{system}\n" if system else "No system message was specified for this model."
    if section == "license":
        return shown.get("license") or "No license was specified for this model."
    if section == "template":
        return shown.get("template") or "No prompt template was specified for this model."
    if section == "parameters":
        return parameters_text(shown.get("parameters") or "", conversation.options)
    if section == "modelfile":
        return modelfile_text(shown.get("modelfile") or "", conversation)
    if section == "info":
        return info_text(shown, system)
    return None


def parameters_text(model_parameters: str, session: dict[str, Any]) -> str:
    lines = ["Model defined parameters:"]
    if model_parameters.strip():
        lines += [f"  {line}" for line in model_parameters.splitlines()]
    else:
        lines.append("  No additional parameters were specified for this model.")
    lines.append("")
    if session:
        lines.append("User defined parameters:")
        lines += [f"  {key:<30} {_value_text(session[key])}" for key in sorted(session)]
        lines.append("")
    return "\n".join(lines)


def modelfile_text(modelfile: str, conversation: Conversation) -> str:
    """The model's Modelfile with the session's SYSTEM and PARAMETER lines in place of its own."""
    from corral_runtime.store.modelfile import parameter_lines

    text = modelfile
    if conversation.system:
        text = re.sub(r'^SYSTEM (""".*?"""|".*?"|[^\n]*)\n', "", text, flags=re.S | re.M)
        text = text.rstrip("\n") + f'\nSYSTEM """{conversation.system}"""\n'
    if conversation.options:
        keys = "|".join(re.escape(key) for key in conversation.options)
        text = re.sub(rf"^PARAMETER ({keys}) [^\n]*\n", "", text, flags=re.M)
        text = text.rstrip("\n") + "\n" + "\n".join(parameter_lines(conversation.options)) + "\n"
    return text


def info_text(shown: dict[str, Any], system: str) -> str:
    """``/show info``: ``corral show``'s sections (the model's facts, capabilities, parameters,
    system in effect and the licence's first lines), from any server's /api/show answer."""
    from corral_runtime.commands.models import show_sections

    defaults = {"model_info": {}, "details": {}, "parameters": "", "license": ""}
    return show_sections({**defaults, **shown, "system": system}).rstrip("\n")


def _value_text(value: Any) -> str:
    from corral_runtime.store.modelfile import parameter_text

    if isinstance(value, list):
        return "[" + " ".join(parameter_text(item) for item in value) + "]"
    return parameter_text(value)


def go_duration(nanoseconds: int) -> str:
    """A duration as Go prints one (``1.5s``, ``348.2514ms``, ``2m3.5s``, ``812µs``): the
    form Ollama's timing summary uses."""
    if nanoseconds == 0:
        return "0s"
    for unit, size in (("ns", 1), ("µs", 10**3), ("ms", 10**6)):
        if nanoseconds < size * 1000:
            return _trimmed(nanoseconds / size) + unit
    minutes, rest = divmod(nanoseconds, 60 * 10**9)
    hours, minutes = divmod(minutes, 60)
    seconds = _trimmed(rest / 10**9) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def _trimmed(number: float) -> str:
    return f"{number:.9f}".rstrip("0").rstrip(".")


def format_stats(final: dict[str, Any]) -> str:
    """``/set verbose``'s summary of a reply, from its closing chunk (Ollama's lines)."""
    lines = []

    def add(label: str, value: str) -> None:
        lines.append(f"{label + ':':<22}{value}")

    if "total_duration" in final:
        add("total duration", go_duration(int(final["total_duration"])))
    if "load_duration" in final:
        add("load duration", go_duration(int(final["load_duration"])))
    for prefix, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, duration = final.get(f"{prefix}_count"), final.get(f"{prefix}_duration")
        if count is not None:
            add(f"{label} count", f"{int(count)} token(s)")
        if duration is not None:
            add(f"{label} duration", go_duration(int(duration)))
            if count is not None and int(duration) > 0:
                add(f"{label} rate", f"{int(count) / (int(duration) / 1e9):.2f} tokens/s")
    return "\n".join(lines)

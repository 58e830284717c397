"""``corral run``'s prompt loop, Ollama's REPL: slash commands, ``\"\"\"`` multi-line input,
line editing and history, and Ctrl-C that stops a reply rather than the session.

The decisions are small pure functions (what a line means, a parameter's typed value, the
request ``/save`` sends, what ``/show`` prints, the timing summary); ``Repl`` applies them to a
``chat.Conversation``; ``LineEditor`` is Python's ``readline`` (arrow keys, Ctrl-A/E/K/U/W,
history in ``~/.corral/history`` as Ollama keeps ``~/.ollama/history``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Protocol, TextIO

from corral_operator.cli.chat import Conversation, ModelNotFound, say
from corral_operator.cli.cluster import CommandError
from corral_operator.cli.reports import format_stats, show_text

PROMPT = ">>> "
ALT_PROMPT = "... "
QUOTES = '"""'
HISTORY_FILE = Path("~/.corral/history")
HISTORY_LENGTH = 1000
EXIT_HINT = "Use Ctrl + d or /bye to exit."

HELP = """Commands:
  /set             change a setting of this session (/? set lists them)
  /show            what the model is made of (/? show lists the parts)
  /load MODEL      switch to MODEL and start a new conversation
  /save NAME       keep this session as a new model NAME
  /clear           forget the conversation so far
  /bye             leave (Ctrl + d does too)
  /?, /help        this help; /? set, /? show, /? shortcuts

Begin and end a message with \"\"\" to write it over several lines.
"""
HELP_SET = """/set takes:
  parameter KEY VALUE...   a model option for the next replies (/set parameter lists them)
  system TEXT              the system message (quote it, or wrap it in \"\"\" to write lines)
  history | nohistory      keep entered lines in ~/.corral/history, or stop keeping them
  format json | noformat   ask for JSON replies, or plain ones again
  verbose | quiet          print the timings after each reply, or stop printing them
  think | nothink          ask a thinking model to show its thinking, or not to think
"""
HELP_SHOW = """/show takes:
  info         the model's architecture, size, capabilities, parameters and licence
  license      the model's licence
  modelfile    the Modelfile that would build this session's model
  parameters   the model's parameters, then this session's own
  system       the system message in effect
  template     the model's prompt template
"""
HELP_SHORTCUTS = """Keys:
  Ctrl + a / Ctrl + e     start / end of the line
  Alt + b / Alt + f       one word back / forward
  Ctrl + k / Ctrl + u     delete to the end / to the start of the line
  Ctrl + w                delete the word before the cursor
  Up / Down               earlier / later lines from the history
  Ctrl + l                clear the screen
  Ctrl + c                stop the reply being written (at the prompt: drop the line)
  Ctrl + d                leave (/bye)
"""
HELP_PARAMETERS = """Parameters (the common ones; any of Ollama's model options works):
  seed INT              the random seed
  num_predict INT       most tokens in a reply
  num_ctx INT           the context window, in tokens
  temperature FLOAT     higher is more varied
  top_k INT             sample from the k likeliest tokens
  top_p FLOAT           ... whose probabilities add up to p
  min_p FLOAT           ... at least min_p times the likeliest one's probability
  repeat_penalty FLOAT  how much repeating is penalised
  repeat_last_n INT     how many recent tokens count as repeats
  num_gpu INT           layers offloaded to the GPU
  stop TEXT...          where replies end (one or more strings)
"""

# -- what a line means ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One complete input: ``line`` (a command if it starts with ``/``, else a prompt),
    ``prompt`` (a ``\"\"\"`` block: always a prompt) or ``system`` (a ``/set system`` block)."""

    kind: Literal["line", "prompt", "system"]
    text: str


@dataclass
class Assembler:
    """Joins ``\"\"\"`` multi-line input: a line starting with ``\"\"\"`` (or ``/set system
    \"\"\"``) opens a block that the first line ending with ``\"\"\"`` closes."""

    kind: Literal["prompt", "system"] | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.kind is not None

    def reset(self) -> None:
        self.kind, self.lines = None, []

    def feed(self, line: str) -> Entry | None:
        """The entry ``line`` completes, or None while a block is still open."""
        if self.kind is not None:
            closed = line.endswith(QUOTES)
            self.lines.append(line.removesuffix(QUOTES) if closed else line)
            if not closed:
                return None
            entry = Entry(self.kind, "\n".join(self.lines))
            self.reset()
            return entry
        words = line.split(maxsplit=2)
        if len(words) == 3 and words[:2] == ["/set", "system"] and words[2].startswith(QUOTES):
            return self._open("system", words[2])
        if line.startswith(QUOTES):
            return self._open("prompt", line)
        return Entry("line", line)

    def _open(self, kind: Literal["prompt", "system"], text: str) -> Entry | None:
        body = text.removeprefix(QUOTES)
        if len(body) >= len(QUOTES) and body.endswith(QUOTES):
            return Entry(kind, body.removesuffix(QUOTES))
        self.kind, self.lines = kind, [body]
        return None


def system_text(rest: str) -> str:
    """``/set system``'s text: the rest of the line, without one pair of enclosing quotes."""
    text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def typed_parameter(key: str, values: list[str]) -> Any:
    """``/set parameter KEY VALUE…`` as the option's value, typed by Ollama's parameter table
    (the Modelfile's): ``stop`` takes every value as a list, the others exactly one. ValueError
    names what is wrong, so the session can say it and go on."""
    from corral_runtime.store.modelfile import PARAMETER_TYPES, parameter_value

    kind = PARAMETER_TYPES.get(key)
    if kind is None:
        raise ValueError(f"unknown parameter {key!r} (/set parameter lists the common ones)")
    if kind is list:
        return list(values)
    if len(values) != 1:
        raise ValueError(f"parameter {key} takes one value, not {len(values)}")
    return parameter_value(key, values[0])


def create_body(name: str, conversation: Conversation) -> dict[str, Any]:
    """What ``/save NAME`` asks /api/create for: the current model with the session's system
    message, parameters and conversation, as Ollama saves a session."""
    body: dict[str, Any] = {"model": name, "from": conversation.model}
    if conversation.system:
        body["system"] = conversation.system
    if conversation.options:
        body["parameters"] = dict(conversation.options)
    if conversation.messages:
        body["messages"] = [dict(message) for message in conversation.messages]
    return body


# -- reading lines -------------------------------------------------------------------------------


class Reader(Protocol):
    history: bool

    def read(self, prompt: str) -> str: ...


class LineEditor:
    """``input`` with GNU readline: editing keys, arrow keys that move (never ``^[[A``), and
    history kept in ``path`` line by line as it is entered, unless ``/set nohistory``."""

    def __init__(self, path: Path | None) -> None:
        import readline

        self._readline = readline
        self.path = path
        self.history = True
        readline.set_auto_history(False)
        readline.set_history_length(HISTORY_LENGTH)
        if path is not None:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.touch(mode=0o600, exist_ok=True)
                readline.read_history_file(path)
                readline.write_history_file(path)  # lines are appended; keep the newest only
            except OSError:
                self.path = None  # no history file here; editing still works

    def read(self, prompt: str) -> str:
        line = input(prompt)
        if self.history and line.strip():
            self._readline.add_history(line)
            if self.path is not None:
                try:
                    self._readline.append_history_file(1, self.path)
                except OSError:
                    self.path = None
        return line


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class Repl:
    """The session: reads entries, runs commands, streams replies."""

    conversation: Conversation
    reader: Reader
    out: TextIO
    err: TextIO
    verbose: bool = False
    assembler: Assembler = field(default_factory=Assembler)

    def run(self) -> None:
        """Until ``/bye`` or Ctrl-D. Ctrl-C at the prompt drops what was typed and says how to
        leave; during a reply it stops the reply."""
        while True:
            try:
                line = self.reader.read(ALT_PROMPT if self.assembler.open else PROMPT)
            except EOFError:
                self.out.write("\n")
                return
            except KeyboardInterrupt:
                self.out.write(f"\n{EXIT_HINT}\n")
                self.assembler.reset()
                continue
            entry = self.assembler.feed(line)
            if entry is not None and not self.handle(entry):
                return

    def handle(self, entry: Entry) -> bool:
        """Act on one entry; False ends the session."""
        if entry.kind == "system":
            self.conversation.system = entry.text
            self.say("Set system message.")
            return True
        if entry.kind == "prompt" or not entry.text.startswith("/"):
            if entry.text.strip():
                self.reply(entry.text)
            return True
        words = entry.text.split()
        name, args = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        command = self.commands().get(name)
        if command is None:
            self.say(f"Unknown command '{name}'. Type /? for help")
        else:
            command(args, entry.text)
        return True

    def commands(self) -> dict[str, Callable[[list[str], str], None]]:
        return {
            "/set": self.set,
            "/show": self.show,
            "/load": self.load,
            "/save": self.save,
            "/clear": self.clear,
            "/?": self.help,
            "/help": self.help,
        }

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def reply(self, prompt: str) -> None:
        try:
            say(self.conversation, prompt, self.out)
        except KeyboardInterrupt:
            self.out.write("\n")  # the reply stopped; its partial turn is not kept
            return
        except CommandError as exc:
            self.err.write(f"Error: {exc}\n")
            return
        if self.verbose and self.conversation.final:
            self.err.write(format_stats(self.conversation.final) + "\n")
        self.out.write("\n")
        self.out.flush()

    def set(self, args: list[str], line: str) -> None:
        if not args:
            self.out.write(HELP_SET)
            return
        what, conversation = args[0], self.conversation
        if what == "parameter":
            if len(args) < 3:
                self.out.write(HELP_PARAMETERS)
                return
            try:
                conversation.options[args[1]] = typed_parameter(args[1], args[2:])
            except ValueError as exc:
                self.say(f"Couldn't set parameter: {exc}")
                return
            self.say(f"Set parameter '{args[1]}' to '{', '.join(args[2:])}'")
        elif what == "system":
            text = system_text(line.split(maxsplit=2)[2]) if len(args) > 1 else ""
            if not text:
                self.out.write(HELP_SET)
                return
            conversation.system = text
            self.say("Set system message.")
        elif what in ("history", "nohistory"):
            self.reader.history = what == "history"
            self.say(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            self.say(f"Set '{what}' mode.")
        elif what in ("think", "nothink"):
            conversation.think = what == "think"
            self.say(f"Set '{what}' mode.")
        elif what == "format":
            if args[1:] != ["json"]:
                self.say("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            conversation.format = "json"
            self.say("Set format to 'json' mode.")
        elif what == "noformat":
            conversation.format = None
            self.say("Disabled format.")
        else:
            self.say(f"Unknown command '/set {what}'. Type /? for help")

    def show(self, args: list[str], line: str) -> None:
        if not args:
            self.out.write(HELP_SHOW)
            return
        try:
            shown = self.conversation.show()
        except CommandError as exc:
            self.err.write(f"Error: couldn't get model: {exc}\n")
            return
        text = show_text(args[0], shown, self.conversation)
        self.say(f"Unknown command '/show {args[0]}'. Type /? for help" if text is None else text)

    def load(self, args: list[str], line: str) -> None:
        if len(args) != 1:
            self.say("Usage:\n  /load <modelname>")
            return
        try:
            self.conversation.show(args[0])
        except ModelNotFound:
            self.say(f"Couldn't find model '{args[0]}'")
            return
        except CommandError as exc:
            self.err.write(f"Error: {exc}\n")
            return
        self.conversation.model = args[0]
        self.conversation.messages.clear()
        self.say(f"Loading model '{args[0]}'")

    def save(self, args: list[str], line: str) -> None:
        if len(args) != 1:
            self.say("Usage:\n  /save <modelname>")
            return
        try:
            self.conversation.create(create_body(args[0], self.conversation))
        except CommandError as exc:
            self.err.write(f"Error: {exc}\n")
            return
        self.say(f"Created new model '{args[0]}'")

    def clear(self, args: list[str], line: str) -> None:
        self.conversation.messages.clear()
        self.say("Cleared session context")

    def help(self, args: list[str], line: str) -> None:
        topic = args[0].removeprefix("/") if args else ""
        texts = {"set": HELP_SET, "show": HELP_SHOW, "shortcut": HELP_SHORTCUTS}
        self.out.write(texts.get(topic.removesuffix("s"), HELP) + "\n")


def pull_progress(err: TextIO) -> Callable[[dict[str, Any]], None]:
    """Prints /api/pull's progress chunks as ``corral pull`` prints its own."""
    from corral_runtime.commands.models import ProgressPrinter

    printer = ProgressPrinter(err, tty=err.isatty())

    def progress(chunk: dict[str, Any]) -> None:
        printer(
            SimpleNamespace(
                status=str(chunk.get("status", "")),
                digest=chunk.get("digest"),
                total=chunk.get("total"),
                completed=chunk.get("completed", 0 if chunk.get("total") else None),
            )
        )
        if chunk.get("status") == "success":
            printer.finish_line()

    return progress


def interact(conversation: Conversation, out: TextIO, err: TextIO) -> None:
    """The session at a terminal, with line editing and ``~/.corral/history``."""
    editor = LineEditor(HISTORY_FILE.expanduser())
    Repl(conversation, editor, out, err).run()

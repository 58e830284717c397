"""``corral pull|list|rm|cp|show``: managing the model store from the command line.

The store is ``--models DIR``, else ``CORRAL_MODELS``, else ``~/.corral/models``. ``corral pull``
is also what the operator's pull Job runs: its flags default to the Model's name, pinned digest,
template, system, parameters, messages and license the Job sets (``PullJobSettings``,
``CORRAL_PULL_*``) and, when ``CORRAL_PULL_RESULT_FILE`` is set, it writes one JSON object
describing the result there (see corral_operator.pull).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def default_models_dir() -> Path:
    """The store the runtime serves: ``CORRAL_MODELS`` (as RuntimeSettings reads it), else home."""
    from corral_runtime.settings import RuntimeSettings, default_models_dir

    configured = RuntimeSettings().models
    return Path(configured).expanduser() if configured else default_models_dir()


def _models_dir(args: argparse.Namespace) -> Path:
    return Path(args.models).expanduser() if args.models else default_models_dir()


HELP_GROUPS = dict.fromkeys(("pull", "list", "rm", "cp", "show"), "local")  # corral --help


def register(subparsers: Any) -> None:
    from corral_runtime.settings import PullJobSettings

    job = PullJobSettings()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models",
        metavar="DIR",
        help="model store (default: CORRAL_MODELS or ~/.corral/models)",
    )

    pull = subparsers.add_parser(
        "pull",
        parents=[common],
        help="Pull a model into the store",
        description="Pull ollama://, hf://, https://, pvc:// or a local GGUF into the store.",
    )
    pull.add_argument(
        "source",
        help="e.g. llama3.2:1b, hf://org/repo/file.gguf@rev, https://host/file.gguf, ./model.gguf",
    )
    pull.add_argument(
        "--insecure", action="store_true", help="allow plain-HTTP registries and URLs"
    )
    pull.add_argument(
        "--name",
        default=job.name,
        help="store the model under this name (default: from the source)",
    )
    pull.add_argument(
        "--digest",
        default=job.digest,
        help="require this sha256 (of the GGUF, or of an Ollama manifest)",
    )
    pull.add_argument("--template", default=job.template)
    pull.add_argument("--system", default=job.system)
    pull.add_argument(
        "--parameters",
        default=job.parameters,
        help="JSON object of Ollama parameters (temperature, stop, ...)",
    )
    pull.add_argument(
        "--messages",
        default=job.messages,
        help='JSON array of messages that start every chat ([{"role": "user", "content": "…"}])',
    )
    pull.add_argument("--license", default=job.license, help="the model's license text")
    pull.add_argument("--workers", type=int, default=4, help="parallel download parts")
    pull.set_defaults(func=cmd_pull, result_file=job.result_file)

    lst = subparsers.add_parser(
        "list", aliases=["ls"], parents=[common], help="List the models in the store"
    )
    lst.set_defaults(func=cmd_list)

    rm = subparsers.add_parser(
        "rm", parents=[common], help="Remove models (and the blobs nothing else uses)"
    )
    rm.add_argument("names", nargs="+")
    rm.set_defaults(func=cmd_rm)

    cp = subparsers.add_parser("cp", parents=[common], help="Copy a model to a new name")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)

    show = subparsers.add_parser("show", parents=[common], help="Show information for a model")
    show.add_argument("name")
    only = show.add_mutually_exclusive_group()
    only.add_argument("--json", action="store_true", help="print /api/show's JSON")
    for part in SHOW_PARTS:
        only.add_argument(
            f"--{part}",
            dest="only",
            action="store_const",
            const=part,
            help=f"print only the model's {part}",
        )
    show.set_defaults(func=cmd_show, only=None)


# -- progress ----------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_progress(
    status: str, completed: int, total: int, rate: float | None, width: int = 25
) -> str:
    """``pulling 1a2b3c4d5e6f  45% [=====     ] 114.0 MB/253.1 MB  48.2 MB/s  ETA 3s``."""
    fraction = completed / total if total else 1.0
    filled = int(width * fraction)
    bar = "=" * filled + " " * (width - filled)
    line = f"{status} {fraction:4.0%} [{bar}] {_human(completed)}/{_human(total)}"
    if rate:
        line += f"  {_human(rate)}/s"
        if total > completed:
            line += f"  ETA {_duration((total - completed) / rate)}"
    return line


def pull_bytes_suffix(completed: int, total: int) -> str:
    """The machine-readable end of a plain progress line: the whole pull so far, every layer
    together (``[pull 114000000/253113024 bytes]``). A reader of a pull Job's log (the operator)
    needs only the last such line to know where the pull stands."""
    return f"[pull {completed}/{total} bytes]"


@dataclass
class ProgressPrinter:
    """Draws a progress bar on a terminal; prints plain lines (at most every few seconds)
    otherwise, so logs of a pull Job stay readable. Plain lines end with the bytes of the whole
    pull (``pull_bytes_suffix``)."""

    out: IO[str]
    tty: bool
    interval: float = 0.1
    plain_interval: float = 5.0
    _samples: dict[str, tuple[float, int, float]] = field(default_factory=dict)
    _layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    _undigested: set[str] = field(default_factory=set)
    _last: float = 0.0
    _open_line: bool = False

    def __call__(self, event: Any) -> None:
        if event.total is None or event.completed is None:
            self.finish_line()
            print(event.status, file=self.out, flush=True)
            return
        now = time.monotonic()
        key = event.status
        if event.digest is None:
            self._undigested.add(key)
        else:
            # A blob whose digest was unknown when it started (an import) is this one.
            for placeholder in self._undigested:
                self._layers.pop(placeholder, None)
            self._undigested.clear()
        self._layers[key] = (event.completed, event.total)
        start, start_bytes, _ = self._samples.get(key, (now, event.completed, now))
        if key not in self._samples:
            self._samples[key] = (now, event.completed, now)
        elapsed = now - start
        rate = (event.completed - start_bytes) / elapsed if elapsed > 0.5 else None
        done = event.completed >= event.total
        interval = self.interval if self.tty else self.plain_interval
        if not done and now - self._last < interval:
            return
        if done and self._samples[key][2] < 0:
            return  # already printed as complete
        if done:
            self._samples[key] = (start, start_bytes, -1.0)
        self._last = now
        line = format_progress(event.status, event.completed, event.total, rate)
        if self.tty:
            self.out.write("\r\x1b[K" + line)
            self._open_line = True
            if done:
                self.finish_line()
        else:
            done_bytes = sum(c for c, _ in self._layers.values())
            total_bytes = sum(t for _, t in self._layers.values())
            print(f"{line}  {pull_bytes_suffix(done_bytes, total_bytes)}", file=self.out)
        self.out.flush()

    def finish_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self._open_line = False


# -- commands ----------------------------------------------------------------------------------


def _write_result(path: str | None, doc: dict[str, Any]) -> None:
    """Write the pull's result where the Job asked (its termination log); nowhere if unset."""
    if not path:
        return
    data = json.dumps(doc, separators=(",", ":"))
    if len(data.encode()) > 4000:  # the kubelet keeps at most 4 KiB of a termination message
        data = json.dumps(
            {k: v for k, v in doc.items() if k != "error"}
            | ({"error": str(doc["error"])[:3000]} if "error" in doc else {})
        )
    with open(path, "w") as f:
        f.write(data)


def tensor_bytes(model_path: Path) -> dict[str, int]:
    """What a model's weights take, from its tensor table (no tensor data is read): all of them
    (``weightsBytes``), the largest repeating block ``blk.N`` (``layerBytes``: what each layer
    offloaded to a GPU costs) and the rest (``outputBytes``: embeddings, output norm and head).
    Empty when the file has no readable table; the operator then sizes nothing from it."""
    from corral_runtime.store.gguf import GGUFError, read_gguf_header, tensor_nbytes

    try:
        with open(model_path, "rb") as f:
            header = read_gguf_header(f, model_path.stat().st_size)
        blocks: dict[str, int] = {}
        total = 0
        for tensor in header.tensors:
            size = tensor_nbytes(tensor)
            total += size
            if tensor.name.startswith("blk."):
                block = tensor.name.split(".", 2)[1]
                blocks[block] = blocks.get(block, 0) + size
    except (GGUFError, OSError, ValueError):
        return {}
    layer = max(blocks.values(), default=0)
    return {
        "weightsBytes": total,
        "layerBytes": layer,
        "outputBytes": total - sum(blocks.values()),
    }


def pull_result(model: Any) -> dict[str, Any]:
    """The pull's result for the Model's status: what /api/show says, and the facts the operator
    sizes a ModelServer's pods from (the shape of the KV cache and what the weights take)."""
    from corral_runtime.store.catalog import model_details

    details = model_details(model)
    doc: dict[str, Any] = {
        "name": model.name.display,
        "digest": model.model_digest,
        "sizeBytes": model.size,
        "format": "gguf",
    }
    if details is not None:
        doc.update(
            {
                "family": details.family,
                "parameterSize": details.parameter_size,
                "quantization": details.quantization_level,
                "contextLength": details.context_length,
                "parameterCount": details.parameter_count,
                "blockCount": details.block_count,
                "embeddingLength": details.embedding_length,
                "headCount": details.head_count,
                "headCountKV": details.head_count_kv,
                "keyLength": details.key_length,
                "valueLength": details.value_length,
                "feedForwardLength": details.feed_forward_length,
                "vocabSize": details.vocab_size,
                **tensor_bytes(Path(model.model_path)),
            }
        )
    return {k: v for k, v in doc.items() if v not in (None, "")}


MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def parse_messages(raw: str) -> list[dict[str, str]]:
    """``--messages`` (``CORRAL_PULL_MESSAGES``): a JSON array of ``{"role", "content"}`` objects,
    as a Modelfile's MESSAGE lines and a Model's spec.messages say them. ValueError naming the
    first thing wrong, so a bad value fails the pull before anything is downloaded."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError("--messages must be a JSON array") from None
    if not isinstance(doc, list):
        raise ValueError("--messages must be a JSON array")
    messages = []
    for index, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise ValueError(f"--messages[{index}] must be an object with a string content")
        if item.get("role") not in MESSAGE_ROLES:
            raise ValueError(f"--messages[{index}]: role must be one of {', '.join(MESSAGE_ROLES)}")
        messages.append({"role": item["role"], "content": item["content"]})
    return messages


def cmd_pull(args: argparse.Namespace) -> int:
    from corral_runtime.engine.probe import probe_model
    from corral_runtime.settings import SourceSettings
    from corral_runtime.store.layout import ModelStore
    from corral_runtime.store.names import InvalidNameError, parse_name
    from corral_runtime.store.pull import Puller, PullOptions
    from corral_runtime.store.sources import InvalidSourceError, parse_source

    try:
        where = SourceSettings()
        source = parse_source(args.source, pvc_root=where.pvc_root)
        name = parse_name(args.name) if args.name else None
        params = json.loads(args.parameters) if args.parameters else None
        if params is not None and not isinstance(params, dict):
            raise ValueError("--parameters must be a JSON object")
        messages = parse_messages(args.messages) if args.messages is not None else None
    except (InvalidSourceError, InvalidNameError, ValueError) as exc:
        _write_result(args.result_file, {"error": str(exc)})
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    options = PullOptions(
        insecure=args.insecure,
        workers=args.workers,
        template=args.template,
        system=args.system,
        params=params,
        messages=messages,
        license=args.license,
        expected_digest=args.digest,
        source_settings=where,
    )
    store = ModelStore(_models_dir(args))
    printer = ProgressPrinter(sys.stdout, sys.stdout.isatty())
    try:
        model = Puller(store, options).pull(source, name, printer)
        # Load it once in a child process here, where the store is writable (a pull Job), and
        # record that it loads: servers with the store mounted read-only then skip the probe.
        probe_model(store, model)
    except (RuntimeError, OSError, ValueError) as exc:
        printer.finish_line()
        _write_result(args.result_file, {"error": str(exc)})
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    _write_result(args.result_file, pull_result(model))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from corral_runtime.store.catalog import format_size, list_models
    from corral_runtime.store.layout import ModelStore

    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    for entry in list_models(ModelStore(_models_dir(args))):
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.stored.modified))
        rows.append(
            (
                entry.name,
                entry.digest.removeprefix("sha256:")[:12],
                format_size(entry.stored.size),
                modified,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from corral_runtime.store.layout import ModelNotFoundError, ModelStore
    from corral_runtime.store.names import InvalidNameError
    from corral_runtime.store.refs import delete_model

    store = ModelStore(_models_dir(args))
    status = 0
    for raw in args.names:
        try:
            report = delete_model(store, raw)
        except (ModelNotFoundError, InvalidNameError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"deleted '{raw}' ({len(report.removed)} blobs, {report.freed_bytes} bytes freed)")
    return status


def cmd_cp(args: argparse.Namespace) -> int:
    from corral_runtime.store.layout import CorruptStoreError, ModelNotFoundError, ModelStore
    from corral_runtime.store.names import InvalidNameError
    from corral_runtime.store.refs import copy_model

    try:
        copy_model(ModelStore(_models_dir(args)), args.source, args.destination)
    except (ModelNotFoundError, InvalidNameError, CorruptStoreError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


# What ``corral show --<part>`` prints alone, as ``ollama show`` does.
SHOW_PARTS = ("modelfile", "parameters", "template", "system", "license")
LICENSE_LINES = 2


def show_document(model: Any) -> dict[str, Any]:
    """What ``/api/show`` answers for the model, so ``corral show --json`` and the API agree."""
    from corral_runtime.api.info import show_entry

    return show_entry(model, verbose=False)


def show_sections(doc: dict[str, Any]) -> str:
    """``ollama show``'s sections from an ``/api/show`` document: Model, Capabilities,
    Parameters, System, and the first lines of the License."""
    info, details = doc["model_info"], doc["details"]
    arch = info.get("general.architecture", "")
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size")),
        ("context length", info.get(f"{arch}.context_length")),
        ("embedding length", info.get(f"{arch}.embedding_length")),
        ("quantization", details.get("quantization_level")),
    ]
    sections = [
        ("Model", [f"{label:<20}{value}" for label, value in rows if value not in (None, "")])
    ]
    sections.append(("Capabilities", list(doc.get("capabilities", []))))
    parameters = [line.split(None, 1) for line in doc["parameters"].splitlines() if line.strip()]
    sections.append(("Parameters", [f"{p[0]:<15}{p[1] if len(p) > 1 else ''}" for p in parameters]))
    sections.append(("System", doc["system"].splitlines()))
    license_lines = [line.strip() for line in doc["license"].splitlines() if line.strip()]
    more = ["..."] if len(license_lines) > LICENSE_LINES else []
    sections.append(("License", license_lines[:LICENSE_LINES] + more))
    blocks = [
        "\n".join([f"  {title}", *(f"    {line}" for line in lines)])
        for title, lines in sections
        if lines
    ]
    return "\n\n".join(blocks) + "\n"


def show_part(doc: dict[str, Any], part: str) -> str:
    """One part of the model alone (``--modelfile``, ``--template``, …), ending in a newline."""
    text = str(doc[part])
    return text if text.endswith("\n") or not text else text + "\n"


def cmd_show(args: argparse.Namespace) -> int:
    from corral_runtime.store.gguf import GGUFError
    from corral_runtime.store.layout import CorruptStoreError, ModelNotFoundError, ModelStore
    from corral_runtime.store.names import InvalidNameError

    try:
        model = ModelStore(_models_dir(args)).get(args.name)
        doc = show_document(model)
    except (ModelNotFoundError, InvalidNameError, CorruptStoreError, GGUFError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.only is not None:
        sys.stdout.write(show_part(doc, args.only))
    else:
        sys.stdout.write(show_sections(doc))
    return 0

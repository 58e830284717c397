"""Who uses which blob, and removing blobs nobody uses.

A blob is in use when a manifest names it, when a running pull has pinned it (a pull pins every
digest of the manifest it is about to write, before it fetches or reuses any of them), or when
the caller says a loaded model uses it (``in_use``; the runtime passes its loaded models'
digests). Pins are files under ``<root>/.corral/pulls/`` held with an flock by the pulling
process; a pin whose flock can be taken belongs to a dead process and is stale.

Garbage collection holds an exclusive flock on ``<root>/.corral/gc.lock`` while it decides and
deletes; a pull writes its pin under a shared flock on it, so a collection either sees the pin or
finished before the pull looked for the blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from corral_runtime.store.digests import parse_digest
from corral_runtime.store.layout import STATE_DIR, CorruptStoreError, Manifest, ModelStore
from corral_runtime.store.names import ModelName, parse_name
from corral_runtime.store.safefs import LinkInStoreError, clear_foreign, open_path, opened_dir

_BLOB_NAME_LEN = len("sha256-") + 64


def _state_dir(store: ModelStore, *parts: str) -> Path:
    """``<root>/.corral[/parts…]``, made if needed: LinkInStoreError where a part is a link."""
    with opened_dir(store.root, (STATE_DIR, *parts), create=True):
        pass
    return store.root.joinpath(STATE_DIR, *parts)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    clear_foreign(path)
    fd = open_path(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


class PullPin:
    """Digests a running pull needs; GC keeps them until the pin is released."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.path = store.root / STATE_DIR / "pulls" / f"{uuid.uuid4().hex}.json"
        self.digests: set[str] = set()
        self._fd: int | None = None

    def __enter__(self) -> PullPin:
        _state_dir(self.store, "pulls")
        # Locked before it gets the name GC looks for, so GC never takes it for a stale pin.
        tmp = self.path.with_suffix(".tmp")
        self._fd = open_path(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        tmp.rename(self.path)
        return self

    def add(self, digests: Iterable[str]) -> None:
        assert self._fd is not None, "pin used outside its with-block"
        self.digests.update(parse_digest(d) for d in digests)
        data = json.dumps(sorted(self.digests)).encode()
        with _flock(_state_dir(self.store) / "gc.lock", fcntl.LOCK_SH):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def pinned_digests(store: ModelStore) -> set[str]:
    """Digests pinned by live pulls; pins of dead processes are removed on the way."""
    pins: set[str] = set()
    folder = store.root / STATE_DIR / "pulls"
    try:
        with opened_dir(store.root, (STATE_DIR, "pulls")):  # LinkInStoreError for a link
            pass
    except FileNotFoundError:
        return pins
    for path in folder.glob("*.json"):
        try:
            fd = open_path(path)
        except (FileNotFoundError, LinkInStoreError):
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # nobody holds it: its pull is gone
                continue
            except BlockingIOError:
                pass
            with contextlib.suppress(ValueError, OSError):
                raw = os.pread(fd, 1 << 20, 0)
                pins.update(parse_digest(d) for d in json.loads(raw or b"[]"))
        finally:
            os.close(fd)
    return pins


def manifest_digests(manifest: Manifest) -> set[str]:
    return {manifest.config.digest, *(layer.digest for layer in manifest.layers)}


def referenced_digests(store: ModelStore) -> set[str]:
    """Every digest a manifest in the store names (unreadable manifests are skipped)."""
    refs: set[str] = set()
    for name in store.names():
        with contextlib.suppress(CorruptStoreError, OSError, LookupError):
            refs |= manifest_digests(store.read_manifest(name)[0])
    return refs


def blob_digests(store: ModelStore) -> dict[str, int]:
    """Complete blobs on disk (partials, locks and temp files excluded), with their sizes."""
    found: dict[str, int] = {}
    if not store.blobs.is_dir():
        return found
    for entry in os.scandir(store.blobs):
        if len(entry.name) != _BLOB_NAME_LEN or not entry.is_file(follow_symlinks=False):
            continue
        try:
            digest = parse_digest(entry.name)
        except ValueError:
            continue
        found[digest] = entry.stat(follow_symlinks=False).st_size
    return found


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def collect_garbage(
    store: ModelStore,
    in_use: Iterable[str] = (),
    *,
    candidates: Iterable[str] | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Remove blobs no manifest, pull or loaded model uses (only ``candidates``, if given)."""
    keep = {parse_digest(d) for d in in_use}
    report = GcReport()
    with _flock(_state_dir(store) / "gc.lock", fcntl.LOCK_EX):
        keep |= referenced_digests(store) | pinned_digests(store)
        blobs = blob_digests(store)
        wanted = set(blobs) if candidates is None else {parse_digest(c) for c in candidates}
        for digest in sorted(wanted - keep):
            if digest not in blobs:
                continue
            if not dry_run:
                store.discard_blob(digest)
            report.removed.append(digest)
            report.freed_bytes += blobs[digest]
    return report


def delete_model(store: ModelStore, name: ModelName | str, in_use: Iterable[str] = ()) -> GcReport:
    """Remove a model's manifest, then those of its blobs nothing else uses."""
    if isinstance(name, str):
        name = parse_name(name)
    manifest, _ = store.read_manifest(name)
    # Its empty directories go too, up to (not including) manifests/, as Ollama does.
    store.remove_manifest(name)
    return collect_garbage(store, in_use, candidates=manifest_digests(manifest))


def copy_model(store: ModelStore, source: ModelName | str, destination: ModelName | str) -> Path:
    """Give a model a second name (the manifest is copied; blobs are shared)."""
    src = parse_name(source) if isinstance(source, str) else source
    dst = parse_name(destination) if isinstance(destination, str) else destination
    manifest, _ = store.read_manifest(src)
    return store.write_manifest(dst, manifest.raw)

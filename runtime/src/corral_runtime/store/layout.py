"""Reading and writing the store: blobs, manifests, and the models they describe."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from corral_runtime.store.digests import (
    CHUNK,
    StopCheck,
    blob_filename,
    parse_digest,
    sha256_bytes,
    sha256_file,
    sha256_stream,
)
from corral_runtime.store.gguf import GGUF_CHECKS_VERSION, GGUFDetails, check_model_file
from corral_runtime.store.landing import blob_partial, exclusive_lock, lock_path, start_over
from corral_runtime.store.names import ModelName, parse_name
from corral_runtime.store.safefs import CorruptStoreError as CorruptStoreError
from corral_runtime.store.safefs import (
    LinkInStoreError,
    entry_stat,
    is_regular,
    open_file,
    open_path,
    opened_dir,
    read_file,
    write_all,
    write_atomic,
)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."
MODEL_LAYER = LAYER_PREFIX + "model"
TEMPLATE_LAYER = LAYER_PREFIX + "template"
SYSTEM_LAYER = LAYER_PREFIX + "system"
PARAMS_LAYER = LAYER_PREFIX + "params"
LICENSE_LAYER = LAYER_PREFIX + "license"
MESSAGES_LAYER = LAYER_PREFIX + "messages"
PROJECTOR_LAYER = LAYER_PREFIX + "projector"
ADAPTER_LAYER = LAYER_PREFIX + "adapter"


log = logging.getLogger(__name__)

STATE_DIR = ".corral"
# What is recorded about a blob (a folder of records each under STATE_DIR): its content matches
# its digest; llama.cpp loaded it in a child process (engine/probe.py); it passed this version's
# GGUF checks, with the details they found (a later version's checks check it again).
VERIFIED, LOADS = "verified", "loads"
CHECKED = f"gguf-checks-{GGUF_CHECKS_VERSION}"
FACTS = (VERIFIED, LOADS, CHECKED)
# A record of checked details holds a chat template or two: far less than this.
MAX_DETAILS_RECORD_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of a file: any write, replacement or touch changes it."""
    return (st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _hard_link(source: Path, target: Path) -> bool:
    """Link the file ``source`` names at ``target``; False where it cannot be (another file
    system). A symbolic link is followed, as the hash and a copy follow it: link(2) would link
    the link itself, which the store then refuses as a blob it did not make."""
    try:
        os.link(os.path.realpath(source), target)
    except OSError:
        return False
    return True


def _content_key(st: os.stat_result) -> tuple[int, ...]:
    """One file's content as of a moment (a hard link made since leaves it the same)."""
    return (st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns)


class ModelNotFoundError(LookupError):
    """No manifest for the name, or a manifest whose blobs are missing."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    raw: bytes

    @property
    def digest(self) -> str:
        return sha256_bytes(self.raw)

    def layer(self, media_type: str) -> Layer | None:
        return next((lyr for lyr in self.layers if lyr.media_type == media_type), None)

    def unsupported_parts(self) -> str | None:
        """What the model holds that corral cannot run yet, in a user's words (None: nothing).
        Such a model is refused when it is pulled, created or loaded, never run without it."""
        if self.layer(ADAPTER_LAYER) is not None:
            return "LoRA adapter layers"
        return None

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            config = _layer(doc["config"])
            layers = tuple(_layer(item) for item in doc.get("layers") or [])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"invalid manifest: {exc}") from exc
        return cls(config=config, layers=layers, raw=raw)

    @staticmethod
    def build(config: Layer, layers: list[Layer]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.to_json(),
            "layers": [lyr.to_json() for lyr in layers],
        }
        return json.dumps(doc, indent=None, separators=(",", ":")).encode()


def _layer(item: dict[str, Any]) -> Layer:
    size = item["size"]
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad layer size {size!r}")
    return Layer(media_type=str(item["mediaType"]), digest=parse_digest(item["digest"]), size=size)


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model as the runtime needs it: its name, manifest, and resolved layer contents."""

    name: ModelName
    manifest: Manifest
    model_path: Path
    modified: float
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    license: str | None = None

    @property
    def size(self) -> int:
        return sum(lyr.size for lyr in self.manifest.layers) + self.manifest.config.size

    @property
    def model_digest(self) -> str:
        layer = self.manifest.layer(MODEL_LAYER)
        assert layer is not None
        return layer.digest


class BlobState(enum.Enum):
    """What ``ModelStore.check_blob`` found at a blob's path."""

    MISSING = "missing"
    VALID = "valid"  # a regular file of the expected size whose content hashes to its digest
    INVALID = "invalid"  # anything else: wrong size or content, a link, not a regular file


class ModelStore:
    """An Ollama-layout store rooted at ``root`` (the equivalent of ``~/.ollama/models``).

    Nothing below the root is reached through a link (see ``safefs``). A blob is trusted once its
    sha256 was checked: by the download or import that wrote it, or by ``check_blob`` before its
    first use. The result is recorded under ``.corral/verified/`` keyed by the file's size, inode,
    device, mtime and ctime, so another process or a restart does not hash the blob again while
    any write, replacement or touch of the file makes it hashed again (``mark`` records other
    facts the same way). Where the store is read-only (a pod's mount) the result is kept in
    memory only.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self._verified: dict[tuple[str, str], tuple[int, ...]] = {}
        self._details: dict[str, tuple[tuple[int, ...], GGUFDetails]] = {}
        self._verified_lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / blob_filename(digest)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    @contextlib.contextmanager
    def _dir(self, *parts: str, create: bool = False) -> Iterator[int]:
        with opened_dir(self.root, parts, create=create) as fd:
            yield fd

    def ensure_blobs_dir(self) -> None:
        """Make ``blobs/`` if needed; LinkInStoreError when it is a link or not a directory."""
        with self._dir("blobs", create=True):
            pass

    def _find_manifest(self, name: ModelName) -> ModelName | None:
        host, namespace, model, tag = name.parts
        try:
            with self._dir("manifests", host, namespace, model) as fd:
                if is_regular(entry_stat(fd, tag)):
                    return name
        except (FileNotFoundError, LinkInStoreError):
            pass
        # Case-insensitive lookup, as Ollama does.
        want = name.key()
        return next((other for other in self.names() if other.key() == want), None)

    def _entries(self, parts: tuple[str, ...], directories: bool) -> list[str]:
        """Names under ``manifests/parts…`` that are directories (or regular files), no links."""
        try:
            with self._dir("manifests", *parts) as fd, os.scandir(fd) as it:
                found = [
                    e.name
                    for e in it
                    if not e.name.startswith(".")
                    and (
                        e.is_dir(follow_symlinks=False)
                        if directories
                        else e.is_file(follow_symlinks=False)
                    )
                ]
        except (FileNotFoundError, NotADirectoryError, LinkInStoreError):
            return []
        return sorted(found)

    # -- reading -----------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int | None:
        """A blob's size; None when absent; LinkInStoreError when it is not a regular file."""
        name = blob_filename(digest)
        try:
            with self._dir("blobs") as fd:
                st = entry_stat(fd, name)
        except FileNotFoundError:
            return None
        if st is None:
            return None
        if not is_regular(st):
            raise LinkInStoreError(f"blobs/{name}")
        return st.st_size

    def has_blob(self, digest: str) -> bool:
        """A blob is present: a regular file at its path (a link there is no blob of ours)."""
        try:
            return self.blob_size(digest) is not None
        except LinkInStoreError:
            return False

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        """A blob opened for reading, never through a link (LinkInStoreError)."""
        with self._dir("blobs") as dir_fd:
            fd = open_file(dir_fd, blob_filename(digest))
        with os.fdopen(fd, "rb") as f:
            yield f

    def read_blob_text(self, digest: str, limit: int = 16 * 1024 * 1024) -> str:
        with self._dir("blobs") as fd:
            data, _ = read_file(fd, blob_filename(digest), limit)
        return data.decode("utf-8")

    def _read_manifest(self, name: ModelName) -> tuple[Manifest, ModelName, os.stat_result]:
        found = self._find_manifest(name)
        if found is None:
            raise ModelNotFoundError(name.display)
        host, namespace, model, tag = found.parts
        try:
            with self._dir("manifests", host, namespace, model) as fd:
                raw, st = read_file(fd, tag, MAX_MANIFEST_BYTES)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(name.display) from exc
        return Manifest.parse(raw), found, st

    def read_manifest(self, name: ModelName) -> tuple[Manifest, Path]:
        manifest, found, _ = self._read_manifest(name)
        return manifest, self.manifest_path(found)

    def names(self) -> list[ModelName]:
        found = []
        for host in self._entries((), True):
            for namespace in self._entries((host,), True):
                for model in self._entries((host, namespace), True):
                    for tag in self._entries((host, namespace, model), False):
                        try:
                            found.append(parse_name(f"{host}/{namespace}/{model}:{tag}"))
                        except ValueError:
                            continue
        return found

    def get(self, name: ModelName | str) -> StoredModel:
        """Resolve a name to a model whose model blob exists; raise ModelNotFoundError if not."""
        if isinstance(name, str):
            name = parse_name(name)
        manifest, name, st = self._read_manifest(name)
        model_layer = manifest.layer(MODEL_LAYER)
        if model_layer is None:
            raise CorruptStoreError(f"model '{name.display}' has no model layer")
        size = self.blob_size(model_layer.digest)
        if size is None:
            raise ModelNotFoundError(name.display)
        if size != model_layer.size:
            raise CorruptStoreError(
                f"blob {model_layer.digest} has {size} bytes, the manifest says {model_layer.size}"
            )
        texts: dict[str, str] = {}
        for media in (TEMPLATE_LAYER, SYSTEM_LAYER, PARAMS_LAYER, MESSAGES_LAYER, LICENSE_LAYER):
            layer = manifest.layer(media)
            if layer is not None and self.blob_size(layer.digest) is not None:
                texts[media] = self.read_blob_text(layer.digest)
        params = json.loads(texts[PARAMS_LAYER]) if PARAMS_LAYER in texts else {}
        messages = json.loads(texts[MESSAGES_LAYER]) if MESSAGES_LAYER in texts else []
        return StoredModel(
            name=name,
            manifest=manifest,
            model_path=self.blob_path(model_layer.digest),
            modified=st.st_mtime,
            template=texts.get(TEMPLATE_LAYER),
            system=texts.get(SYSTEM_LAYER),
            params=params if isinstance(params, dict) else {},
            messages=messages if isinstance(messages, list) else [],
            license=texts.get(LICENSE_LAYER),
        )

    # -- verification ------------------------------------------------------------------------

    def check_blob(
        self, digest: str, size: int | None = None, stop: StopCheck | None = None
    ) -> BlobState:
        """Whether the blob at ``digest``'s path is present and holds exactly that content.

        The size is checked every time, the sha256 once per file (see the class docstring).
        ``stop`` is asked between the hash's blocks: what it raises ends the check with nothing
        recorded, so the next check hashes the blob again.
        """
        digest = parse_digest(digest)
        try:
            with self.open_blob(digest) as f:
                st = os.fstat(f.fileno())
                if size is not None and st.st_size != size:
                    return BlobState.INVALID
                if self._is_recorded(digest, st):
                    return BlobState.VALID
                actual = sha256_stream(f, stop)
                if actual != digest:
                    log.warning("blob %s does not hash to its digest", digest)
                    return BlobState.INVALID
                if _stat_key(os.fstat(f.fileno())) == _stat_key(st):
                    self._record(digest, st)
                return BlobState.VALID
        except FileNotFoundError:
            return BlobState.MISSING
        except LinkInStoreError:
            return BlobState.INVALID

    def record_verified(self, digest: str) -> None:
        """Note that the blob now at ``digest``'s path was just hashed (by its writer)."""
        name = blob_filename(digest)
        with self._dir("blobs") as fd:
            st = entry_stat(fd, name)
        if is_regular(st):
            assert st is not None
            self._record(parse_digest(digest), st)

    def discard_blob(self, digest: str) -> None:
        """Remove a blob (a link there is removed itself, never what it points to)."""
        name = blob_filename(digest)
        with contextlib.suppress(FileNotFoundError), self._dir("blobs") as fd:
            os.unlink(name, dir_fd=fd)
        self._forget(parse_digest(digest))

    def check_model(self, stored: StoredModel, stop: StopCheck | None = None) -> GGUFDetails:
        """What must hold before llama.cpp is given a model's blob; the blob's GGUF details.

        The blob is present, of its manifest's size, verified against its digest, and a valid
        GGUF file (``check_model_file``); InvalidModelFileError or CorruptStoreError if not.
        ``stop``: as ``check_blob``'s (a load abandoned midway).
        """
        layer = stored.manifest.layer(MODEL_LAYER)
        assert layer is not None
        return self.check_model_blob(layer.digest, layer.size, model=stored.name.display, stop=stop)

    def check_model_blob(
        self,
        digest: str,
        size: int | None = None,
        *,
        model: str = "",
        stop: StopCheck | None = None,
    ) -> GGUFDetails:
        """``check_model`` for a blob by digest (a file given to create, pull or load)."""
        state = self.check_blob(digest, size, stop)
        if state is BlobState.MISSING:
            raise ModelNotFoundError(model or digest)
        if state is BlobState.INVALID:
            raise CorruptStoreError(
                f"blob {digest} does not match its digest or size; pull the model again"
            )
        digest = parse_digest(digest)
        with self.open_blob(digest) as f:
            st = os.fstat(f.fileno())
            details = self._checked_details(digest, st)
            if details is None:
                details = check_model_file(f, st.st_size)
                self._record_details(digest, st, details)
            return details

    def _checked_details(self, digest: str, st: os.stat_result) -> GGUFDetails | None:
        """The details ``check_model_file`` found in the blob as it is now (``st``), where a
        record of this version's checks holds them. The checks walk every token of the
        vocabulary in Python, 100-150 ms of a 150k-token model's load (more for 262k), on a
        cold start's path before llama.cpp may start: a blob verified against its digest
        cannot have changed since, so it is checked once per version of the checks."""
        key = _stat_key(st)
        with self._verified_lock:
            held = self._details.get(digest)
        if held is not None and held[0] == key:
            return held[1]
        try:
            record = json.loads(self._read_record(CHECKED, digest, MAX_DETAILS_RECORD_BYTES))
            if tuple(record["key"]) != key:
                return None
            details = GGUFDetails(**record["details"])
        except (OSError, ValueError, TypeError, KeyError, CorruptStoreError):
            return None
        with self._verified_lock:
            self._details[digest] = (key, details)
        return details

    def _record_details(self, digest: str, st: os.stat_result, details: GGUFDetails) -> None:
        key = _stat_key(st)
        with self._verified_lock:
            self._details[digest] = (key, details)
        self._write_record(CHECKED, digest, {"key": key, "details": dataclasses.asdict(details)})

    def is_marked(self, digest: str, fact: str) -> bool:
        """Whether ``mark`` recorded ``fact`` (e.g. "loads") about the blob as it is now."""
        digest = parse_digest(digest)
        with self._dir("blobs") as fd:
            st = entry_stat(fd, blob_filename(digest))
        return is_regular(st) and st is not None and self._is_recorded(digest, st, fact)

    def mark(self, digest: str, fact: str) -> None:
        """Record ``fact`` about the blob as it is now (forgotten once the file changes)."""
        digest = parse_digest(digest)
        with self._dir("blobs") as fd:
            st = entry_stat(fd, blob_filename(digest))
        if is_regular(st):
            assert st is not None
            self._record(digest, st, fact)

    def _record_dir(self, fact: str, create: bool) -> contextlib.AbstractContextManager[int]:
        return self._dir(STATE_DIR, fact, create=create)

    def _is_recorded(self, digest: str, st: os.stat_result, fact: str = VERIFIED) -> bool:
        key = _stat_key(st)
        with self._verified_lock:
            if self._verified.get((fact, digest)) == key:
                return True
        try:
            recorded = tuple(json.loads(self._read_record(fact, digest, 4096)))
        except (OSError, ValueError, TypeError, CorruptStoreError):
            return False
        if recorded != key:
            return False
        with self._verified_lock:
            self._verified[(fact, digest)] = key
        return True

    def _record(self, digest: str, st: os.stat_result, fact: str = VERIFIED) -> None:
        key = _stat_key(st)
        with self._verified_lock:
            self._verified[(fact, digest)] = key
        self._write_record(fact, digest, key)

    def _read_record(self, fact: str, digest: str, limit: int) -> bytes:
        """The record of ``fact`` about the blob (OSError or CorruptStoreError if none)."""
        with self._record_dir(fact, False) as fd:
            raw, _ = read_file(fd, blob_filename(digest), limit)
        return raw

    def _write_record(self, fact: str, digest: str, record: object) -> None:
        """Record ``fact`` about the blob as JSON; a read-only store keeps it in memory only
        (the callers' dictionaries)."""
        try:
            with self._record_dir(fact, True) as fd:
                write_atomic(fd, blob_filename(digest), json.dumps(record).encode(), fsync=False)
        except OSError as exc:
            log.debug("could not record blob %s as %s: %s", digest, fact, exc)

    def _forget(self, digest: str) -> None:
        with self._verified_lock:
            self._details.pop(digest, None)
        for fact in FACTS:
            with self._verified_lock:
                self._verified.pop((fact, digest), None)
            with (
                contextlib.suppress(OSError, CorruptStoreError),
                self._record_dir(fact, False) as fd,
            ):
                os.unlink(blob_filename(digest), dir_fd=fd)

    # -- writing -----------------------------------------------------------------------------

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> Layer:
        """Store bytes as a blob (as every blob lands: ``land``). Returns its digest/size."""
        digest = sha256_bytes(data)
        if expected_digest is not None and parse_digest(expected_digest) != digest:
            raise CorruptStoreError(f"digest mismatch: expected {expected_digest}, got {digest}")

        def fill(partial: Path) -> None:
            fd = open_path(partial, _NEW_FILE)
            try:
                write_all(fd, data)  # (hashed above, in memory: it cannot have changed)
                os.fsync(fd)
            finally:
                os.close(fd)

        self.land(digest, len(data), fill)
        return Layer(media_type="", digest=digest, size=len(data))

    def import_file(self, source: Path, *, link: bool = True) -> Layer:
        """Copy (or hard-link, when on the same file system) a file into the store as a blob
        (as every blob lands: ``land``)."""
        hashed = Path(source).stat()
        digest = sha256_file(source)

        def fill(partial: Path) -> None:
            linked = link and _hard_link(source, partial)
            if not linked:
                with (
                    os.fdopen(open_path(partial, _NEW_FILE), "wb") as out,
                    open(source, "rb") as src,
                ):
                    shutil.copyfileobj(src, out, CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
            with os.fdopen(open_path(partial), "rb") as f:
                # A link is the file that was hashed, unless it was written since; a copy is
                # hashed again.
                same = linked and _content_key(os.fstat(f.fileno())) == _content_key(hashed)
                if not same and sha256_stream(f) != digest:
                    raise CorruptStoreError("the file changed while it was being imported")

        self.land(digest, hashed.st_size, fill)
        return Layer(media_type="", digest=digest, size=hashed.st_size)

    def land(self, digest: str, size: int, fill: Callable[[Path], None]) -> None:
        """Make blob ``digest`` present the way every writer does (``landing``).

        Unless the store holds it verified (checked again once the digest's lock is held),
        ``fill`` writes its bytes, already hashed to ``digest``, into a new partial file (raising
        if they do not match); the partial is then published, or removed whatever goes wrong.
        Downloads and uploads, which hash as the bytes arrive, take the same steps themselves.
        """
        if self.check_blob(digest, size) is BlobState.VALID:
            return
        self.ensure_blobs_dir()  # a real directory: LinkInStoreError for a link
        partial = blob_partial(self.blobs, digest)
        with exclusive_lock(lock_path(partial)):
            if self.check_blob(digest, size) is BlobState.VALID:
                return
            start_over(partial)
            try:
                fill(partial)
                self.publish_blob(partial, digest, size)
            finally:
                partial.unlink(missing_ok=True)

    def publish_blob(self, partial: Path, digest: str, size: int) -> None:
        """Make a verified ``partial`` the blob ``digest`` (its writer holds the digest's lock
        and synced it to disk: ``landing``).

        A valid blob already there stays and the partial goes; anything else at the blob's path
        (a corrupt blob, a link) is renamed over, never written through. The bytes were hashed
        as they landed, so the blob is recorded as verified without reading it again.
        """
        if self.check_blob(digest, size) is BlobState.VALID:
            partial.unlink()
            return
        partial.replace(self.blob_path(digest))
        self.record_verified(digest)

    def write_manifest(self, name: ModelName, raw: bytes) -> Path:
        """Write a manifest last, atomically, after every blob it names is present."""
        manifest = Manifest.parse(raw)
        for layer in (manifest.config, *manifest.layers):
            if not self.has_blob(layer.digest):
                raise CorruptStoreError(f"manifest names missing blob {layer.digest}")
        host, namespace, model, tag = name.parts
        with self._dir("manifests", host, namespace, model, create=True) as fd:
            write_atomic(fd, tag, raw)
        return self.manifest_path(name)

    def remove_manifest(self, name: ModelName) -> None:
        """Remove a model's manifest, then its directories left empty (up to ``manifests/``)."""
        _, found, _ = self._read_manifest(name)
        parts = found.parts
        with self._dir("manifests", *parts[:-1]) as fd:
            os.unlink(parts[-1], dir_fd=fd)
        for depth in range(len(parts) - 1, 0, -1):
            try:
                with self._dir("manifests", *parts[: depth - 1]) as fd:
                    os.rmdir(parts[depth - 1], dir_fd=fd)
            except OSError:
                break

    def create_model(
        self,
        name: ModelName | str,
        model_file: Path,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> StoredModel:
        """Create a model from a GGUF file and optional template/system/params layers."""
        blob = self.import_file(model_file)
        return self.compose_model(
            name,
            Layer(MODEL_LAYER, blob.digest, blob.size),
            template=template,
            system=system,
            params=params,
            config=config,
        )

    def compose_model(
        self,
        name: ModelName | str,
        model_layer: Layer,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        license: str | None = None,
        extra_layers: tuple[Layer, ...] = (),
        config: dict[str, Any] | None = None,
    ) -> StoredModel:
        """Write the text layers, the config and (last) the manifest around a stored model blob."""
        if isinstance(name, str):
            name = parse_name(name)
        layers = [
            Layer(model_layer.media_type or MODEL_LAYER, model_layer.digest, model_layer.size),
            *extra_layers,
        ]
        texts = ((TEMPLATE_LAYER, template), (SYSTEM_LAYER, system), (LICENSE_LAYER, license))
        for media, text in texts:
            if text is not None:
                stored = self.put_bytes(text.encode())
                layers.append(Layer(media, stored.digest, stored.size))
        for media, doc in ((PARAMS_LAYER, params), (MESSAGES_LAYER, messages)):
            if doc:
                stored = self.put_bytes(json.dumps(doc, sort_keys=True).encode())
                layers.append(Layer(media, stored.digest, stored.size))
        config_doc: dict[str, Any] = {"model_format": "gguf", "file_type": "", "model_family": ""}
        config_doc.update(config or {})
        config_doc["rootfs"] = {"type": "layers", "diff_ids": [lyr.digest for lyr in layers]}
        stored_config = self.put_bytes(json.dumps(config_doc, sort_keys=True).encode())
        config_layer = Layer(CONFIG_MEDIA_TYPE, stored_config.digest, stored_config.size)
        self.write_manifest(name, Manifest.build(config_layer, layers))
        return self.get(name)

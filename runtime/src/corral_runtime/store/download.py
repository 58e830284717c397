"""Resumable, verified blob downloads into the store.

A blob is downloaded into ``blobs/sha256-<hex>-partial`` in parallel Range parts (fixed-size
chunks handed to worker threads in order, so the completed prefix grows steadily and is hashed
while the rest is still arriving). A small JSON sidecar, ``…-partial.json``, records how many
bytes of each chunk are on disk, so a killed pull continues from what it had. The blob becomes
visible only after its sha256 matches, by an atomic rename, and after an fsync (writeback starts
while the rest is still arriving, so that fsync is short). An exclusive ``flock`` on
``…-partial.lock`` makes concurrent pullers (threads or processes sharing the volume, or an
upload of the same digest: ``landing``) produce one blob: the others wait and then find it in
place.

The first part follows the registry's redirect through the httpx client; once the blob's
download URL is known, each worker fetches its parts from it over a kept-alive connection of its
own that reads bodies into a reused buffer (``DirectLane``).

Downloads whose digest is not known in advance (a plain ``https://`` file) use a partial file
keyed by the URL and land under the digest computed while downloading.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import httpx

from corral_runtime.store.digests import parse_digest
from corral_runtime.store.direct import (
    BODY_READ_SIZE,
    DirectLane,
    DirectTransportError,
    Reply,
)
from corral_runtime.store.landing import (
    blob_partial,
    exclusive_lock,
    lock_path,
    partial_path,
    sidecar_path,
)
from corral_runtime.store.layout import BlobState, Layer, ModelStore
from corral_runtime.store.limits import check_blob_size
from corral_runtime.store.safefs import CorruptStoreError, clear_foreign, open_path
from corral_runtime.store.transfer import (
    HttpStatusError,
    PullError,
    RetryPolicy,
    is_retryable_status,
    parse_retry_after,
    send,
)
from corral_runtime.store.writeback import WRITEBACK_AVAILABLE, Writeback

DEFAULT_CHUNK = 16 * 1024 * 1024
# A blob is fetched in at most this many parts (the sidecar and the plan stay small).
MAX_PARTS = 1 << 16
DEFAULT_WORKERS = 4
READ_SIZE = 1024 * 1024
SIDECAR_INTERVAL = 0.5
POLL_INTERVAL = 0.05
FIRST_REPLY_WAIT = 2.0
# Landed bytes are handed to the disk in steps of this size while the rest is still arriving, so
# the fsync before the rename waits for the last step only (not for the whole blob).
WRITEBACK_STEP = 8 * 1024 * 1024

Progress = Callable[[int, int], None]
HeaderSource = Callable[[bool], dict[str, str]]


class DigestMismatchError(PullError):
    """The downloaded bytes do not hash to the digest they were fetched under."""


class SizeMismatchError(PullError):
    """The server's idea of the blob's size differs from the manifest's."""


class DiskFullError(PullError):
    """No space left for a blob; the partial download was removed."""


class _RangeUnsupportedError(Exception):
    """The server answered a Range request with the whole body."""


def _no_headers(refresh: bool) -> dict[str, str]:
    return {}


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """One blob to fetch: where from, what it must hash to (if known), and how big it is."""

    url: str
    digest: str | None = None
    size: int | None = None
    # Request headers (credentials); called with True after a 401 to get fresh ones.
    headers: HeaderSource = _no_headers


def chunk_ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    """Half-open byte ranges covering ``size`` bytes in ``chunk``-sized pieces."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def part_size(size: int, chunk: int) -> int:
    """``chunk``, or larger where ``size`` would need more than ``MAX_PARTS`` parts."""
    return max(chunk, -(-size // MAX_PARTS))


def contiguous_done(ranges: list[tuple[int, int]], done: list[int]) -> int:
    """Bytes from offset 0 that are certainly on disk (the prefix the hasher may read)."""
    total = 0
    for (start, end), have in zip(ranges, done, strict=True):
        total = start + have
        if have < end - start:
            break
    return total


@dataclass
class _State:
    """What the sidecar records about a partial file."""

    key: str
    size: int
    chunk: int
    done: list[int]
    validator: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "chunk": self.chunk,
            "done": self.done,
            "validator": self.validator,
        }

    @classmethod
    def load(cls, path: Path, key: str, size: int, validator: str) -> _State | None:
        try:
            doc = json.loads(_read_text(path))
            state = cls(
                key=str(doc["key"]),
                size=int(doc["size"]),
                chunk=int(doc["chunk"]),
                done=[int(x) for x in doc["done"]],
                validator=str(doc["validator"]),
            )
        except (OSError, ValueError, KeyError, TypeError, CorruptStoreError):
            return None
        if state.chunk <= 0 or state.size > state.chunk * MAX_PARTS:
            return None  # (not a plan this downloader makes: start over)
        ranges = chunk_ranges(state.size, state.chunk)
        if (
            state.key != key
            or state.size != size
            or state.validator != validator
            or len(ranges) != len(state.done)
            or any(not 0 <= d <= e - s for (s, e), d in zip(ranges, state.done, strict=True))
        ):
            return None
        return state


@dataclass
class _Run:
    """One download attempt's shared state between workers and the hashing loop."""

    fd: int
    ranges: list[tuple[int, int]]
    state: _State
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    next_chunk: int = 0
    replied: threading.Event = field(default_factory=threading.Event)  # a part got an answer

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.stop.set()
            self.cond.notify_all()


class BlobDownloader:
    """Downloads blobs into a ModelStore, resumably and verified (see the module docstring)."""

    def __init__(
        self,
        store: ModelStore,
        client: httpx.Client,
        *,
        insecure: bool = False,
        workers: int = DEFAULT_WORKERS,
        chunk_size: int = DEFAULT_CHUNK,
        policy: RetryPolicy | None = None,
        fsync: bool = True,
        proxied: bool = False,
    ) -> None:
        self.store = store
        self.client = client
        self.insecure = insecure
        self.workers = max(1, workers)
        self.chunk_size = max(64 * 1024, chunk_size)
        self.policy = policy or RetryPolicy()
        self.fsync = fsync
        # A signed CDN URL found by following the first redirect, reused for the other parts.
        self._resolved: dict[str, str] = {}
        # Direct connections (see DirectLane) only where the httpx client would not use a proxy
        # (``proxied``: the environment names one, SourceSettings.proxied).
        self._direct_context: Callable[[], ssl.SSLContext] | None = (
            None if proxied else self._ssl_context
        )
        self._user_agent = client.headers.get("user-agent")
        self._ssl: ssl.SSLContext | None = None
        self._ssl_lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        """The TLS settings the httpx client uses by default, built on first use (it is slow)."""
        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            return self._ssl

    # -- public ------------------------------------------------------------------------------

    def download(self, req: BlobRequest, progress: Progress | None = None) -> Layer:
        """Make the blob present in the store and return its digest and size."""
        report = progress or (lambda done, total: None)
        self.store.ensure_blobs_dir()  # a real directory: LinkInStoreError for a link
        if req.digest is not None:
            digest = parse_digest(req.digest)
            if req.size is not None and req.size < 0:
                raise SizeMismatchError(f"invalid size {req.size} for {digest}")
            existing = self._existing(digest, req.size)
            if existing is not None:
                report(existing.size, existing.size)
                return existing
            base = blob_partial(self.store.blobs, digest)
            key = digest
        else:
            digest = None
            base = partial_path(
                self.store.blobs, "url-" + hashlib.sha256(req.url.encode()).hexdigest()[:40]
            )
            key = req.url
        sidecar = sidecar_path(base)

        def peek() -> None:
            # Another puller holds the lock: show its progress from its sidecar.
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CorruptStoreError):
                doc = json.loads(_read_text(sidecar))
                report(sum(int(x) for x in doc["done"]), int(doc["size"]))

        with exclusive_lock(lock_path(base), on_wait=peek):
            if digest is not None:
                existing = self._existing(digest, req.size, repair=True)
                if existing is not None:
                    report(existing.size, existing.size)
                    return existing
            for attempt in (1, 2):
                try:
                    return self._download_locked(req, digest, key, base, sidecar, report)
                except SizeMismatchError:
                    self._discard(base, sidecar)  # its bytes belong to no blob we want
                    raise
                except DigestMismatchError:
                    # Possibly a transient corruption (a proxy, a CDN node): start over once.
                    self._discard(base, sidecar)
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    # -- internals ---------------------------------------------------------------------------

    def _existing(self, digest: str, size: int | None, repair: bool = False) -> Layer | None:
        """The blob when the store holds it verified (size, and sha256 once per file).

        With ``repair`` (under the blob's lock) one that fails verification is removed, so that
        it is fetched again rather than trusted or failed on forever.
        """
        state = self.store.check_blob(digest, size)
        if state is BlobState.VALID:
            actual = self.store.blob_size(digest)
            assert actual is not None
            return Layer(media_type="", digest=digest, size=actual)
        if state is BlobState.INVALID and repair:
            self.store.discard_blob(digest)
        return None

    @staticmethod
    def _discard(base: Path, sidecar: Path) -> None:
        base.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)

    def _probe(self, req: BlobRequest) -> tuple[int, str]:
        """The blob's size and a validator (ETag/Last-Modified) when the request lacks a size."""
        response = self._open(req, 0, 1)
        try:
            if response.status_code == 206:
                total = response.headers.get("content-range", "").rpartition("/")[2]
                if total.isdigit():
                    return int(total), _validator(response)
            length = response.headers.get("content-length", "")
            if response.status_code == 200 and length.isdigit():
                return int(length), _validator(response)
        finally:
            response.close()
        raise PullError(f"{req.url}: the server does not say how large the file is")

    def _download_locked(
        self,
        req: BlobRequest,
        digest: str | None,
        key: str,
        base: Path,
        sidecar: Path,
        report: Progress,
    ) -> Layer:
        if req.size is not None:
            size, validator = req.size, ""
        else:
            size, validator = self._probe(req)
        # Declared sizes are untrusted: bounded before a part list is planned for them.
        check_blob_size(size, req.url)
        clear_foreign(base)  # a link at the partial's path is replaced, never written through
        clear_foreign(sidecar)
        state = _State.load(sidecar, key, size, validator) if base.is_file() else None
        if state is None:
            self._discard(base, sidecar)
            chunk = part_size(size, self.chunk_size)
            state = _State(
                key=key,
                size=size,
                chunk=chunk,
                done=[0] * len(chunk_ranges(size, chunk)),
                validator=validator,
            )
        ranges = chunk_ranges(size, state.chunk)
        self._check_space(size - sum(state.done), base)
        fd = open_path(base, os.O_RDWR | os.O_CREAT)
        try:
            os.fchmod(fd, 0o644)
            os.ftruncate(fd, size)
            _save(sidecar, state)
            try:
                computed = self._run(req, _Run(fd=fd, ranges=ranges, state=state), sidecar, report)
            except _RangeUnsupportedError:
                # The server ignores Range: one stream from the start.
                state = _State(
                    key=key, size=size, chunk=max(size, 1), done=[0], validator=validator
                )
                ranges = chunk_ranges(size, state.chunk)
                computed = self._run(
                    req,
                    _Run(fd=fd, ranges=ranges, state=state, next_chunk=0),
                    sidecar,
                    report,
                    workers=1,
                )
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                self._discard(base, sidecar)
                raise DiskFullError(
                    f"no space left in {self.store.blobs} for a {size}-byte blob: {exc.strerror}"
                ) from exc
            raise
        finally:
            os.close(fd)
        if digest is not None and computed != digest:
            raise DigestMismatchError(
                f"downloaded bytes hash to {computed}, expected {digest} ({req.url})"
            )
        self.store.publish_blob(base, computed, size)
        sidecar.unlink(missing_ok=True)
        report(size, size)
        return Layer(media_type="", digest=computed, size=size)

    def _check_space(self, needed: int, base: Path) -> None:
        free = shutil.disk_usage(base.parent).free
        if needed > free:
            raise DiskFullError(
                f"not enough space in {self.store.blobs}: need {needed} more bytes, "
                f"{free} available"
            )

    def _run(
        self,
        req: BlobRequest,
        run: _Run,
        sidecar: Path,
        report: Progress,
        workers: int | None = None,
    ) -> str:
        """Fetch every unfinished chunk with worker threads while hashing the finished prefix."""
        hasher = hashlib.sha256()
        hashed = 0
        flushed = 0
        size = run.state.size
        threads = [
            threading.Thread(
                target=self._worker, args=(req, run), daemon=True, name=f"corral-download-{i}"
            )
            for i in range(min(workers or self.workers, len(run.ranges)))
        ]
        if threads:
            threads[0].start()
        if len(threads) > 1 and req.url not in self._resolved and self._direct_context:
            # The first part's answer says where the blob is (a redirect to a CDN URL): the other
            # workers wait for it, then fetch from there over direct connections at once.
            run.replied.wait(FIRST_REPLY_WAIT)
        for thread in threads[1:]:
            thread.start()
        last_save = time.monotonic()
        mapping = mmap.mmap(run.fd, size, prot=mmap.PROT_READ) if size else None
        view = memoryview(mapping) if mapping is not None else memoryview(b"")
        writeback = Writeback(run.fd) if self.fsync and WRITEBACK_AVAILABLE else None
        try:
            while True:
                with run.cond:
                    prefix = contiguous_done(run.ranges, run.state.done)
                    if prefix == hashed and run.error is None and hashed < size:
                        run.cond.wait(POLL_INTERVAL)
                        prefix = contiguous_done(run.ranges, run.state.done)
                    error = run.error
                    done_total = sum(run.state.done)
                    snapshot = _State(
                        run.state.key,
                        size,
                        run.state.chunk,
                        list(run.state.done),
                        run.state.validator,
                    )
                if error is not None:
                    raise error
                if writeback is not None and (
                    prefix - flushed >= WRITEBACK_STEP or prefix == size > flushed
                ):
                    writeback.submit(flushed, prefix - flushed)
                    flushed = prefix
                while hashed < prefix:
                    step = min(READ_SIZE * 16, prefix - hashed)
                    # Hash straight from the page cache through a mapping: no copy.
                    hasher.update(view[hashed : hashed + step])
                    hashed += step
                report(done_total, size)
                now = time.monotonic()
                if now - last_save >= SIDECAR_INTERVAL:
                    _save(sidecar, snapshot)
                    last_save = now
                if hashed >= size:
                    break
        except BaseException as exc:
            run.fail(exc)
            for thread in threads:
                thread.join()
            with run.cond:
                _save(sidecar, run.state)
            raise
        finally:
            if writeback is not None:
                writeback.close()
            view.release()
            if mapping is not None:
                mapping.close()
        for thread in threads:
            thread.join()
        return "sha256:" + hasher.hexdigest()

    def _worker(self, req: BlobRequest, run: _Run) -> None:
        lane = DirectLane(self._direct_context, self.policy.stall_timeout, self._user_agent)
        try:
            while not run.stop.is_set():
                with run.cond:
                    index = run.next_chunk
                    while index < len(run.ranges) and (
                        run.state.done[index] >= run.ranges[index][1] - run.ranges[index][0]
                    ):
                        index += 1
                    run.next_chunk = index + 1
                if index >= len(run.ranges):
                    return
                self._fetch_chunk(req, run, index, lane)
        except BaseException as exc:
            run.fail(exc)
        finally:
            run.replied.set()  # (a worker with nothing left to fetch must not hold the others)
            lane.close()

    def _fetch_chunk(self, req: BlobRequest, run: _Run, index: int, lane: DirectLane) -> None:
        start, end = run.ranges[index]
        attempt = 0
        refreshed = False
        while True:
            offset = start + run.state.done[index]
            if offset >= end:
                return
            try:
                self._stream_range(req, run, index, offset, end, refreshed, lane)
                return
            except HttpStatusError as exc:
                if exc.status == 401 and not refreshed:
                    refreshed = True
                    continue
                if exc.status in (401, 403, 404) and req.url in self._resolved:
                    # A signed redirect URL may have expired: resolve it again.
                    self._resolved.pop(req.url, None)
                    attempt += 1
                elif is_retryable_status(exc.status):
                    attempt += 1
                else:
                    raise
                retry_after = exc.retry_after
            except (httpx.TransportError, DirectTransportError, _ShortBodyError):
                attempt += 1
                retry_after = None
            if attempt >= self.policy.attempts:
                raise PullError(
                    f"giving up on {req.url} after {attempt} attempts (bytes {offset}-{end - 1})"
                )
            if offset < start + run.state.done[index]:
                attempt = 1  # progress was made: the budget starts over
            if run.stop.wait(self.policy.delay(attempt, retry_after)):
                return

    def _open(
        self, req: BlobRequest, start: int, end: int, refresh: bool = False
    ) -> httpx.Response:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        url = self._resolved.get(req.url)
        if url is None:
            # Credentials go to the URL they were issued for, never to a redirect target.
            url = req.url
            headers.update(req.headers(refresh))
        response = send(
            self.client, "GET", url, headers=headers, insecure=self.insecure, stream=True
        )
        final = str(response.url)
        if final != req.url and response.status_code in (200, 206):
            self._resolved[req.url] = final
        return response

    def _open_range(
        self, req: BlobRequest, start: int, end: int, refresh: bool, lane: DirectLane
    ) -> Reply:
        """A Range GET: over the worker's direct connection once the blob's (credential-free)
        download URL is known and the lane can serve it, else through the httpx client."""
        resolved = self._resolved.get(req.url)
        if resolved is not None:
            reply = lane.open(resolved, start, end)
            if reply is not None:
                return reply
        response = self._open(req, start, end, refresh)
        # httpcore reads 64 KiB at a time; per read, its parser's work costs more than the copy.
        _widen_reads(response, BODY_READ_SIZE)
        return Reply(
            response.status_code,
            str(response.url),
            response.headers.get,
            response.iter_raw(),  # no chunk_size: a drop loses nothing received
            response.close,
        )

    def _stream_range(
        self,
        req: BlobRequest,
        run: _Run,
        index: int,
        offset: int,
        end: int,
        refresh: bool,
        lane: DirectLane,
    ) -> None:
        try:
            reply = self._open_range(req, offset, end, refresh, lane)
        finally:
            run.replied.set()
        try:
            status = reply.status
            if status not in (200, 206):
                raise HttpStatusError(
                    status, reply.url, retry_after=parse_retry_after(reply.header("retry-after"))
                )
            if status == 206:
                _check_content_range(
                    reply.header("content-range") or "", offset, end, run.state.size
                )
            elif offset != 0 or end != run.state.size:
                raise _RangeUnsupportedError
            else:
                length = reply.header("content-length")
                if length is not None and length.isdigit() and int(length) != run.state.size:
                    raise SizeMismatchError(
                        f"{reply.url} has {length} bytes, expected {run.state.size}"
                    )
            position = offset
            for block in reply.blocks:
                if run.stop.is_set():
                    return
                if position + len(block) > end:
                    raise SizeMismatchError(
                        f"{reply.url} sent more bytes than the {run.state.size} expected"
                    )
                _pwrite_all(run.fd, block, position)
                position += len(block)
                # A plain store (no lock, no wake-up): the hashing loop polls, so the hot path
                # stays as cheap as a plain download's.
                run.state.done[index] = position - run.ranges[index][0]
            with run.cond:
                run.cond.notify_all()
            if position < end:
                raise _ShortBodyError
        finally:
            reply.close()


class _ShortBodyError(Exception):
    """The connection ended before the requested range was complete."""


def _widen_reads(response: httpx.Response, size: int) -> None:
    """Let the connection under a streamed response read up to ``size`` bytes per recv.

    The connection is the puller's own (its client is not shared), and its HTTP parser still
    sees every byte; only the read size changes. httpx offers no setting for it, so this follows
    the response's stream wrappers (httpx's, then httpcore's) down to the connection; where that
    path does not exist (another httpx/httpcore version, HTTP/2, a proxy), reads keep their
    default size.
    """
    node: object = response.stream
    for _ in range(8):
        if isinstance(node, httpcore.HTTP11Connection):
            node.READ_NUM_BYTES = size
            return
        node = next(
            (getattr(node, a) for a in _STREAM_LINKS if hasattr(node, a)),
            None,
        )


_STREAM_LINKS = ("_stream", "_httpcore_stream", "_connection")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _check_content_range(value: str, start: int, end: int, size: int) -> None:
    unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit()):
        raise PullError(f"malformed Content-Range {value!r}")
    if total != "*" and (not total.isdigit() or int(total) != size):
        raise SizeMismatchError(f"the server says the blob has {total} bytes, expected {size}")
    if int(first) != start or int(last) > end - 1:
        raise PullError(f"Content-Range {value!r} does not match the requested {start}-{end - 1}")


def _validator(response: httpx.Response) -> str:
    return response.headers.get("etag") or response.headers.get("last-modified") or ""


def _save(sidecar: Path, state: _State) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    clear_foreign(tmp)
    with os.fdopen(open_path(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        json.dump(state.to_json(), f)
    tmp.replace(sidecar)


def _read_text(path: Path) -> str:
    """A scratch file's text, never read through a link (LinkInStoreError)."""
    with os.fdopen(open_path(path), "r") as f:
        return f.read()

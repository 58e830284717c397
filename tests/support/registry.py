"""A real Ollama-protocol registry on loopback, with a "CDN" and switchable faults.

Two HTTP/1.1 servers on 127.0.0.1: the registry (``/v2/<ns>/<model>/manifests/<tag>``,
``/v2/<ns>/<model>/blobs/<digest>``, ``/token``, plus Hugging-Face-style
``/<org>/<repo>/resolve/<rev>/<path>`` and plain ``/files/<name>`` for hf:// and https:// sources)
and a CDN that serves blob bytes with Range support. Blob requests at the registry answer 307 to
the CDN (when ``redirect`` is on), as registry.ollama.ai does. With ``auth`` on, manifest and blob
requests need a bearer token obtained through the ``WWW-Authenticate`` challenge.

Faults (``Faults``) apply to blob bodies and can be changed while the servers run: fail the next
N requests with a status, drop the connection after some bytes, corrupt bytes, send slowly,
ignore Range, or hold every body once a number of bytes went out (``hold_after_bytes``: a pull
stopped at an exact point, to be killed there). Every request is logged so that tests can check
what was asked, and with which headers.

It can also be hostile, as a registry on the internet may be: manifests that declare whatever
sizes, counts and media types it likes (``add_declared_manifest``), files that claim any size
(``Hostility.file_size``), and redirects of manifests, blobs and files to any URL
(``Hostility.redirect_*``: a cloud metadata address, loopback, another port).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.ollama.image."

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Faults:
    """Misbehaviour switched on by tests; counters count down per blob request."""

    fail_status: int = 503
    fail_next: int = 0  # answer the next N blob requests with fail_status
    retry_after: str | None = None
    drop_after_bytes: int | None = None  # close the connection after this many body bytes...
    drop_next: int = 0  # ...for the next N blob requests
    corrupt: bool = False  # flip one byte in every blob body
    slow_seconds_per_mib: float = 0.0  # pace bodies
    stall_seconds: float = 0.0  # after drop_after_bytes, sleep instead of dropping
    ignore_range: bool = False
    manifest_fail_next: int = 0
    pass_next: int = (
        0  # serve the next N blob requests without the faults (fail, drop, corrupt, ...)
    )
    # Once this many blob body bytes went out (all requests together), every body waits until the
    # faults are reset or the client hangs up; ``sent_bytes`` counts them.
    hold_after_bytes: int | None = None
    sent_bytes: int = 0

    def take(self, attr: str) -> bool:
        value = getattr(self, attr)
        if value > 0:
            setattr(self, attr, value - 1)
            return True
        return False


def hold_allowance(sent: int, limit: int | None, want: int) -> int:
    """How many of ``want`` bytes may still go out before the hold (all of them without one)."""
    if limit is None:
        return want
    return max(0, min(want, limit - sent))


@dataclass
class Hostility:
    """A registry that lies or points elsewhere; applies until ``reset()``."""

    redirect_manifests_to: str | None = None  # every manifest request answers 307 here
    redirect_blobs_to: str | None = None  # every blob and file request answers 307 here
    file_size: int | None = None  # the size files claim (X-Linked-Size, HEAD's Content-Length)
    # Manifest and token answers this long (claiming a terabyte), then the connection closes.
    manifest_body_bytes: int | None = None
    token_body_bytes: int | None = None


@dataclass
class LoggedRequest:
    server: str
    method: str
    path: str
    headers: dict[str, str]
    client_port: int = 0  # tells the client's connections apart (keep-alive reuse)


@dataclass
class Blob:
    digest: str
    size: int
    path: Path


@dataclass
class RegistryState:
    root: Path
    blobs: dict[str, Blob] = field(default_factory=dict)
    manifests: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # /files/<name> and hf paths -> digest
    faults: Faults = field(default_factory=Faults)
    hostility: Hostility = field(default_factory=Hostility)
    auth: bool = False
    redirect: bool = True
    redirect_credentials: bool = False  # put user:password@ into the CDN Location
    tokens: set[str] = field(default_factory=set)
    log: list[LoggedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cdn_base: str = ""
    cdn_alias_base: str = ""  # the CDN under a different origin name ("localhost")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as Go's net/http (registry.ollama.ai, CDNs) sets it: without it a small body
    # written after the headers waits for the client's delayed ACK (~40 ms per JSON reply).
    disable_nagle_algorithm = True
    server_name_: str = ""
    state: RegistryState

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _log(self) -> None:
        with self.state.lock:
            self.state.log.append(
                LoggedRequest(
                    self.server_name_,
                    self.command,
                    self.path,
                    dict(self.headers),
                    int(self.client_address[1]),
                )
            )

    def _reply(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._reply(status, body, headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._log()
        try:
            if self.server_name_ == "cdn":
                self._cdn()
            else:
                self._registry()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- registry ----------------------------------------------------------------------------

    def _authorized(self) -> bool:
        if not self.state.auth:
            return True
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.state.tokens

    def _challenge(self, scope: str) -> None:
        host = self.headers.get("Host", "")
        realm = f"http://{host}/token"
        value = f'Bearer realm="{realm}",service="test-registry",scope="{scope}"'
        self._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": value})

    def _registry(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/token":
            if self.state.hostility.token_body_bytes is not None:
                self._endless_body(self.state.hostility.token_body_bytes)
                return
            token = secrets.token_hex(16)
            with self.state.lock:
                self.state.tokens.add(token)
            self._reply(200, json.dumps({"token": token}).encode())
            return
        match = re.fullmatch(r"/v2/([^/]+)/([^/]+)/(manifests|blobs)/([^/]+)", path)
        if match:
            namespace, model, kind, ref = match.groups()
            if not self._authorized():
                self._challenge(f"repository:{namespace}/{model}:pull")
                return
            if kind == "manifests":
                self._manifest(namespace, model, ref)
            else:
                self._redirect_or_serve(ref, {})
            return
        match = re.fullmatch(r"/[^/]+/[^/]+/resolve/[^/]+/(.+)", path)
        if match or path.startswith("/files/"):
            digest = self.state.files.get(path)
            if digest is None:
                self._error(404, "NOT_FOUND", "no such file")
                return
            blob = self.state.blobs[digest]
            claimed = self.state.hostility.file_size
            if claimed is not None and self.command == "HEAD":
                self._reply(200, b"", {"X-Linked-Size": str(claimed)}, "application/octet-stream")
                return
            extra = {"X-Linked-Size": str(blob.size)}
            if match:
                extra["X-Linked-Etag"] = f'"{digest.removeprefix("sha256:")}"'
            self._redirect_or_serve(digest, extra if match else {})
            return
        self._error(404, "NOT_FOUND", f"unknown path {path}")

    def _manifest(self, namespace: str, model: str, tag: str) -> None:
        if self.state.hostility.redirect_manifests_to:
            self._reply(307, b"", {"Location": self.state.hostility.redirect_manifests_to})
            return
        if self.state.hostility.manifest_body_bytes is not None:
            self._endless_body(self.state.hostility.manifest_body_bytes)
            return
        if self.state.faults.take("manifest_fail_next"):
            self._error(self.state.faults.fail_status, "UNAVAILABLE", "injected failure")
            return
        raw = self.state.manifests.get((namespace, model, tag))
        if raw is None:
            self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            return
        self._reply(200, raw, content_type=MANIFEST_MEDIA_TYPE)

    def _endless_body(self, length: int) -> None:
        """A 200 claiming a terabyte of JSON; ``length`` bytes of it, then a hang-up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        block = b" " * (64 * 1024)
        sent = 0
        with contextlib.suppress(OSError):
            while sent < length:
                self.wfile.write(block[: length - sent])
                sent += min(len(block), length - sent)
        self.close_connection = True

    def _redirect_or_serve(self, digest: str, extra: dict[str, str]) -> None:
        if self.state.hostility.redirect_blobs_to:
            self._reply(307, b"", {"Location": self.state.hostility.redirect_blobs_to, **extra})
            return
        if digest not in self.state.blobs:
            self._error(404, "BLOB_UNKNOWN", "blob unknown")
            return
        if not self.state.redirect:
            self._serve_blob(digest, extra)
            return
        base = self.state.cdn_alias_base or self.state.cdn_base
        if self.state.redirect_credentials:
            base = base.replace("://", "://user:secret@", 1)
        location = f"{base}/blobs/{digest}?sig={secrets.token_hex(4)}"
        self._reply(307, b"", {"Location": location, **extra})

    # -- CDN ---------------------------------------------------------------------------------

    def _cdn(self) -> None:
        path = self.path.split("?", 1)[0]
        match = re.fullmatch(r"/blobs/(sha256:[0-9a-f]{64})", path)
        if not match or match.group(1) not in self.state.blobs:
            self._error(404, "BLOB_UNKNOWN", "blob unknown")
            return
        self._serve_blob(match.group(1), {})

    def _serve_blob(self, digest: str, extra: dict[str, str]) -> None:
        faults = self.state.faults
        blob = self.state.blobs[digest]
        untouched = faults.take("pass_next")
        if not untouched and faults.take("fail_next"):
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            self._error(faults.fail_status, "UNAVAILABLE", "injected failure", headers)
            return
        start, end = 0, blob.size  # half-open
        status = 200
        requested = self.headers.get("Range")
        if requested and not faults.ignore_range:
            match = _RANGE.fullmatch(requested.strip())
            if match is None or int(match.group(1)) >= max(blob.size, 1):
                self._reply(416, b"", {"Content-Range": f"bytes */{blob.size}"})
                return
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, blob.size) if match.group(2) else blob.size
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{digest.removeprefix("sha256:")}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        drop = faults.drop_after_bytes if not untouched and faults.take("drop_next") else None
        plain = untouched or not (
            faults.corrupt
            or faults.slow_seconds_per_mib
            or drop is not None
            or faults.hold_after_bytes is not None
        )
        with open(blob.path, "rb") as f:
            if plain:
                self.connection.sendfile(f, start, end - start)
                return
            self._send_faulty(f, start, end, drop)

    def _send_faulty(self, f: Any, start: int, end: int, drop: int | None) -> None:
        faults = self.state.faults
        sent = 0
        f.seek(start)
        position = start
        while position < end:
            block = f.read(min(64 * 1024, end - position))
            if drop is not None and sent + len(block) > drop:
                block = block[: drop - sent]
                self.wfile.write(block)
                if faults.stall_seconds:
                    time.sleep(faults.stall_seconds)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            if faults.corrupt and position <= start + len(block) // 2 < position + len(block):
                data = bytearray(block)
                data[len(data) // 2] ^= 0xFF
                block = bytes(data)
            self._write_held(block)
            sent += len(block)
            position += len(block)
            if faults.slow_seconds_per_mib:
                time.sleep(faults.slow_seconds_per_mib * len(block) / (1024 * 1024))

    def _write_held(self, block: bytes) -> None:
        """Write ``block``, waiting at the hold point (``Faults.hold_after_bytes``) if it is set."""
        view = memoryview(block)
        while view:
            with self.state.lock:
                faults = self.state.faults  # reset() replaces it: that lifts the hold
                allowed = hold_allowance(faults.sent_bytes, faults.hold_after_bytes, len(view))
                faults.sent_bytes += allowed
            if allowed == 0:
                time.sleep(0.01)
                continue
            self.wfile.write(view[:allowed])
            view = view[allowed:]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (a cancelled or killed pull) are part of the tests.
        return


class TestRegistry:
    """The registry and CDN servers, their content, faults and request log."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        root: Path,
        *,
        auth: bool = False,
        redirect: bool = True,
        address: str = "127.0.0.1",
        cdn_tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``cdn_tls`` (certificate, key files) makes the CDN speak HTTPS, as real ones do."""
        root.mkdir(parents=True, exist_ok=True)
        self.state = RegistryState(root=root, auth=auth, redirect=redirect)
        # Loopback by default; a pod in its own network namespace needs an address it can reach.
        self.address = address
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.registry_port = self._start("registry")
        cdn_port = self._start("cdn", cdn_tls)
        self.cdn_scheme = "https" if cdn_tls else "http"
        self.state.cdn_base = f"{self.cdn_scheme}://{address}:{cdn_port}"
        self.cdn_port = cdn_port

    def _start(self, name: str, tls: tuple[Path, Path] | None = None) -> int:
        handler = type(
            f"{name.title()}Handler", (_Handler,), {"server_name_": name, "state": self.state}
        )
        server = _QuietServer((self.address, 0), handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, name=f"test-{name}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return int(server.server_address[1])

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The registry as the host part of a model name (``127.0.0.1:<port>``)."""
        return f"{self.address}:{self.registry_port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def hostility(self) -> Hostility:
        return self.state.hostility

    def reset(self) -> None:
        self.state.faults = Faults()
        self.state.hostility = Hostility()
        self.state.log.clear()
        self.state.redirect_credentials = False
        self.state.cdn_alias_base = ""

    def use_cdn_alias(self) -> None:
        """Redirect blobs to the CDN as ``localhost`` (another origin than 127.0.0.1)."""
        self.state.cdn_alias_base = f"{self.cdn_scheme}://localhost:{self.cdn_port}"

    def requests(self, server: str | None = None) -> list[LoggedRequest]:
        with self.state.lock:
            return [r for r in self.state.log if server is None or r.server == server]

    # -- content -----------------------------------------------------------------------------

    def add_blob(self, data: bytes | Path) -> tuple[str, int]:
        if isinstance(data, Path):
            h = hashlib.sha256()
            with open(data, "rb") as f:
                while chunk := f.read(4 << 20):
                    h.update(chunk)
            digest, path = "sha256:" + h.hexdigest(), data
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            path = self.state.root / digest.replace(":", "-")
            path.write_bytes(data)
        size = path.stat().st_size
        self.state.blobs[digest] = Blob(digest, size, path)
        return digest, size

    def add_model(
        self,
        namespace: str,
        model: str,
        tag: str,
        gguf: bytes | Path,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> bytes:
        """Publish a model (GGUF + text layers + config); returns the raw manifest."""
        layers = []
        digest, size = self.add_blob(gguf)
        layers.append({"mediaType": LAYER + "model", "digest": digest, "size": size})
        for kind, text in (("template", template), ("system", system)):
            if text is not None:
                d, s = self.add_blob(text.encode())
                layers.append({"mediaType": LAYER + kind, "digest": d, "size": s})
        if params:
            d, s = self.add_blob(json.dumps(params).encode())
            layers.append({"mediaType": LAYER + "params", "digest": d, "size": s})
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "gemma3",
                "rootfs": {"type": "layers", "diff_ids": [lyr["digest"] for lyr in layers]},
            }
        )
        cd, cs = self.add_blob(config.encode())
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cd, "size": cs},
                "layers": layers,
            }
        ).encode()
        self.state.manifests[(namespace, model, tag)] = raw
        return raw

    def add_declared_manifest(
        self,
        namespace: str,
        model: str,
        tag: str,
        layers: list[tuple[str, object]],
        *,
        config_size: object = 2,
        media_prefix: str = LAYER,
    ) -> bytes:
        """Publish a manifest whose layers declare what a hostile registry likes: ``(kind,
        size)`` pairs, ``kind`` a layer kind ("model", "template", …) or any media type after
        ``media_prefix``, ``size`` any JSON value (2**62, -1, 1.5, "12"). Its digests name no
        blob here: a pull that plans or fetches them has already failed the test."""

        def fake_digest(text: str) -> str:
            return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {
                    "mediaType": CONFIG_MEDIA_TYPE,
                    "digest": fake_digest(f"{model}-config"),
                    "size": config_size,
                },
                "layers": [
                    {
                        "mediaType": media_prefix + kind,
                        "digest": fake_digest(f"{model}-{i}-{kind}"),
                        "size": size,
                    }
                    for i, (kind, size) in enumerate(layers)
                ],
            }
        ).encode()
        self.state.manifests[(namespace, model, tag)] = raw
        return raw

    def add_raw_manifest(self, namespace: str, model: str, tag: str, raw: bytes) -> None:
        self.state.manifests[(namespace, model, tag)] = raw

    def add_file(self, url_path: str, data: bytes | Path) -> str:
        """Serve a file at ``/files/<name>`` or ``/<org>/<repo>/resolve/<rev>/<path>``."""
        digest, _ = self.add_blob(data)
        self.state.files[url_path] = digest
        return digest

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def running_registry(root: Path, **kwargs: Any) -> Iterator[TestRegistry]:
    registry = TestRegistry(root, **kwargs)
    try:
        yield registry
    finally:
        registry.close()

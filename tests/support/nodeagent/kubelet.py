"""The kubelet's container-log endpoint, so ``kubectl logs`` (the API server's ``pods/log``) works
for pods the node agent runs.

The API server reaches a node's kubelet at the node's address and
``status.daemonEndpoints.kubeletEndpoint.Port`` over HTTPS; without
``--kubelet-certificate-authority`` it does not verify the kubelet's certificate, so a
self-signed one per node does. It asks::

    GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N&limitBytes=N&previous=true

The worker appends every run of a container to one file (``<pod dir>/logs/<container>.log``), each
run after a banner line; a run is what the kubelet calls a container instance: the log is the
current run's output, ``previous`` the run before it. ``tailLines`` applies first, then
``limitBytes`` (the first bytes of what is left), as the kubelet does; ``follow=true`` streams
what the current run appends until it ends. ``timestamps`` and
``sinceSeconds``/``sinceTime`` are ignored: the files hold no times.

``parse_log_request``, ``container_runs`` and ``select_log`` are the pure part; ``KubeletServer`` is
the thin HTTPS server around them.
"""

from __future__ import annotations

import logging
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .worker import Container, PodWorker

log = logging.getLogger("nodeagent.kubelet")

# The worker's banner before each run of a container (worker._banner): "--- <time> node agent: ...".
BANNER = re.compile(rb"^--- \S+ node agent: ")
_BANNER_ANYWHERE = re.compile(rb"(?m)^--- \S+ node agent: ")
FOLLOW_POLL_SECONDS = 0.3


class LogRequestError(ValueError):
    """A request the kubelet would answer with 400."""


@dataclass(frozen=True)
class LogRequest:
    namespace: str
    pod: str
    container: str
    tail_lines: int | None = None
    limit_bytes: int | None = None
    previous: bool = False
    follow: bool = False


@dataclass(frozen=True)
class ContainerLog:
    """Where one container's runs are logged, and whether it runs now (``follow`` ends when not)."""

    path: Path
    running: Callable[[], bool]


# (namespace, pod, container) -> the container's log; None when no such container is on this node.
LogLookup = Callable[[str, str, str], ContainerLog | None]


def _running(record: Container) -> bool:
    return record.proc is not None


def worker_logs(workers: Callable[[], Iterable[PodWorker]]) -> LogLookup:
    """The lookup over a node's pod workers (a pod still running wins over one stopping)."""

    def lookup(namespace: str, pod: str, container: str) -> ContainerLog | None:
        candidates = [
            w
            for w in workers()
            if (w.pod["metadata"]["namespace"], w.pod["metadata"]["name"]) == (namespace, pod)
        ]
        candidates.sort(key=lambda w: not w.stopped.is_set())
        for worker in reversed(candidates):
            for record in (*worker.inits, *worker.containers):
                if record.name == container:
                    # Where worker.start_container sends the container's output.
                    path = worker.dir / "logs" / f"{container}.log"
                    return ContainerLog(path, partial(_running, record))
        return None

    return lookup


def _flag(values: dict[str, list[str]], name: str) -> bool:
    return (values.get(name) or ["false"])[-1].lower() in ("1", "true")


def _count(values: dict[str, list[str]], name: str, least: int) -> int | None:
    given = values.get(name)
    if not given:
        return None
    raw = given[-1]
    try:
        value = int(raw)
    except ValueError:
        raise LogRequestError(f"{name}: {raw!r} is not an integer") from None
    if value < least:
        raise LogRequestError(f"{name} must be at least {least}")
    return value


def parse_log_request(target: str) -> LogRequest | None:
    """A ``/containerLogs/...`` request target; None for any other path."""
    parts = urlsplit(target)
    segments = [unquote(s) for s in parts.path.split("/")]
    if len(segments) != 5 or segments[:2] != ["", "containerLogs"] or not all(segments[2:]):
        return None
    values = parse_qs(parts.query)
    return LogRequest(
        namespace=segments[2],
        pod=segments[3],
        container=segments[4],
        tail_lines=_count(values, "tailLines", 0),
        limit_bytes=_count(values, "limitBytes", 1),
        previous=_flag(values, "previous"),
        follow=_flag(values, "follow"),
    )


def container_runs(data: bytes) -> list[bytes]:
    """The output of each run of a container, oldest first, without the worker's banners."""
    runs: list[list[bytes]] = []
    for line in data.splitlines(keepends=True):
        if BANNER.match(line):
            runs.append([])
        elif runs:
            runs[-1].append(line)
    return [b"".join(lines) for lines in runs]


def until_next_run(appended: bytes) -> tuple[bytes, bool]:
    """What a followed run appended: the bytes before the next run's banner, and whether one
    began (the followed run is over then)."""
    match = _BANNER_ANYWHERE.search(appended)
    if match is None:
        return appended, False
    return appended[: match.start()], True


def tail(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines (a last line without a newline counts as one)."""
    if lines == 0:
        return b""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)


def select_log(data: bytes, request: LogRequest) -> bytes | None:
    """What the kubelet answers for ``request`` from a container's log file; None when the
    previous run is asked for and there is none."""
    runs = container_runs(data)
    wanted = -2 if request.previous else -1
    if len(runs) < (2 if request.previous else 1):
        if request.previous:
            return None
        return b""
    chosen = runs[wanted]
    if request.tail_lines is not None:
        chosen = tail(chosen, request.tail_lines)
    if request.limit_bytes is not None:
        chosen = chosen[: request.limit_bytes]
    return chosen


# -- serving ----------------------------------------------------------------------------------


def serving_context(directory: Path, address: str) -> ssl.SSLContext:
    """A TLS context with a fresh self-signed certificate for ``address``, kept in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{address}.crt", directory / f"{address}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={address}",
            "-addext",
            f"subjectAltName=IP:{address}",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _plain(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            request = parse_log_request(self.path)
        except LogRequestError as error:
            self._plain(400, f"{error}\n")
            return
        if request is None:
            self._plain(404, "404 page not found\n")
            return
        found = self.server.lookup(request.namespace, request.pod, request.container)
        if found is None:
            self._plain(
                404,
                f"container {request.container} of pod {request.namespace}/{request.pod} "
                "is not on this node\n",
            )
            return
        try:
            data = found.path.read_bytes()
        except FileNotFoundError:
            data = b""
        body = select_log(data, request)
        if body is None:
            self._plain(400, f"previous terminated container {request.container!r} not found\n")
            return
        if not request.follow:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._follow(found, body, len(data))

    def _follow(self, found: ContainerLog, first: bytes, offset: int) -> None:
        """Stream what the current run appends until it stops, a new run begins or the client
        leaves."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            self._chunk(first)
            ended = False
            while not ended and not self.server.stopping.is_set():
                running = found.running()
                with open(found.path, "rb") as f:
                    f.seek(offset)
                    more = f.read()
                offset += len(more)
                more, ended = until_next_run(more)
                self._chunk(more)
                if not running:
                    break
                time.sleep(FOLLOW_POLL_SECONDS)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, FileNotFoundError):
            return

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    lookup: LogLookup
    stopping: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("kubelet request from %s failed", client_address, exc_info=True)


class KubeletServer:
    """The endpoint of one node: HTTPS on ``address`` (the node's address), a free port."""

    def __init__(self, address: str, lookup: LogLookup, cert_dir: Path) -> None:
        self._server = _Server((address, 0), _Handler, bind_and_activate=True)
        self._server.lookup = lookup
        self._server.stopping = threading.Event()
        context = serving_context(cert_dir, address)
        # The handshake happens in the request's thread, not in the one that accepts.
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"kubelet-{address}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

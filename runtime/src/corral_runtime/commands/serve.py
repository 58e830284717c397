"""``corral serve``: run the inference server (Ollama and OpenAI APIs) with uvicorn.

Flags override ``CORRAL_*`` environment variables; with neither, it serves the bundled test
model on 127.0.0.1:11434, or where Ollama's ``OLLAMA_HOST`` says (as ``ollama serve`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, get_args

from pydantic import ValidationError

from corral_runtime.durations import InvalidKeepAliveError, parse_default_keep_alive
from corral_runtime.settings import KvCacheType, RuntimeSettings

if TYPE_CHECKING:
    from uvicorn import Server

    from corral_runtime.engine.manager import ModelManager
    from corral_runtime.startup import Engine

# How long a shutdown waits for the models' close once uvicorn is done: a load under way was
# abandoned at the first signal and stops at llama.cpp's next progress step (a GPU's offload
# steps per tensor), but a CPU load steps only after reading its whole mapped file.
ABANDONED_LOAD_WAIT_SECONDS = 2.0
# How long the web stack's import waits for the preload's load to begin (``Engine.load_begun``):
# the checks of a probed blob take 100-200 ms here (more on a busy machine); a new blob's hash
# and probe take longer, and are not held up for: ``/healthz`` and uvicorn's SIGTERM handling
# come no more than this later than they would.
WEB_IMPORT_HOLD_SECONDS = 1.0

HELP_GROUPS = {"serve": "local"}  # where `corral --help` lists it (corral_runtime.cli)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="Serve models over the Ollama and OpenAI APIs",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=(
            "The address: --host/--port, else CORRAL_HOST/CORRAL_PORT, else Ollama's "
            "OLLAMA_HOST (0.0.0.0, host:port, :port, http://host:port; a missing host is "
            "127.0.0.1, a missing port 11434), else 127.0.0.1:11434."
        ),
    )
    parser.add_argument(
        "--host", help="address to bind (default 127.0.0.1; CORRAL_HOST, else OLLAMA_HOST)"
    )
    parser.add_argument(
        "--port", type=int, help="port (default 11434; CORRAL_PORT, else OLLAMA_HOST's)"
    )
    parser.add_argument(
        "--models",
        metavar="DIR",
        help=(
            "Ollama-layout model store (CORRAL_MODELS); "
            "default ~/.corral/models, seeded with the bundled test model"
        ),
    )
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (CORRAL_API_KEY)")
    parser.add_argument(
        "--admin-api-key",
        help=(
            "key for model management (create, pull, copy, delete, blobs); the --api-key then "
            "grants inference only (CORRAL_ADMIN_API_KEY)"
        ),
    )
    parser.add_argument(
        "--management",
        action=argparse.BooleanOptionalAction,
        help=(
            "serve the model-management endpoints (default); --no-management answers them "
            "403 (CORRAL_MANAGEMENT)"
        ),
    )
    parser.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help=(
            "comma-separated Host names served besides IPs, localhost and --host; "
            "'.example.com' for a domain, '*' for any (CORRAL_ALLOWED_HOSTS)"
        ),
    )
    parser.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help=(
            "comma-separated browser origins allowed besides local ones, '*' as a wildcard "
            "(CORRAL_ALLOWED_ORIGINS)"
        ),
    )
    parser.add_argument(
        "--pull-allowed-hosts",
        metavar="HOSTS",
        help=(
            "comma-separated hosts /api/pull may fetch from ('name', 'name:port', "
            "'.example.com', '10.0.0.0/8', '*'); default: any public host, never loopback, "
            "private or link-local ones (CORRAL_PULL_ALLOWED_HOSTS)"
        ),
    )
    parser.add_argument(
        "--pull-allow-insecure",
        action=argparse.BooleanOptionalAction,
        help="let /api/pull use plain HTTP (default off; CORRAL_PULL_ALLOW_INSECURE)",
    )
    parser.add_argument(
        "--pull-allow-local-paths",
        action=argparse.BooleanOptionalAction,
        help="let /api/pull import local files (default off; CORRAL_PULL_ALLOW_LOCAL_PATHS)",
    )
    parser.add_argument(
        "--graceful-shutdown",
        type=int,
        dest="graceful_shutdown_seconds",
        metavar="SECONDS",
        help=(
            "on SIGTERM, answer new requests 503 and let those in flight finish for up to this "
            "long (default 30; CORRAL_GRACEFUL_SHUTDOWN_SECONDS)"
        ),
    )
    parser.add_argument(
        "--parallel",
        type=int,
        help="requests decoded at once per model (default: from the context length)",
    )
    parser.add_argument("--max-queue", type=int, help="requests waiting per model before 503")
    parser.add_argument(
        "--queue-timeout",
        type=float,
        dest="queue_timeout_seconds",
        help="seconds a request may wait for a slot before 503 (default 600)",
    )
    parser.add_argument("--context-length", type=int, help="default num_ctx (default 4096)")
    parser.add_argument("--max-loaded-models", type=int, help="models kept loaded at once")
    parser.add_argument(
        "--preload",
        metavar="MODELS",
        help="comma-separated models to load at start-up, before a request asks (CORRAL_PRELOAD)",
    )
    parser.add_argument("--gpu-layers", help="'auto' (default), a number, or 0 for CPU only")
    parser.add_argument(
        "--keep-alive",
        type=_keep_alive,
        dest="keep_alive_seconds",
        help=(
            "keep_alive of requests that set none: seconds or a duration (default 5m; "
            "negative: forever; CORRAL_KEEP_ALIVE)"
        ),
    )
    parser.add_argument("--threads", type=int, help="decode threads (default: all cores)")
    parser.add_argument(
        "--kv-cache-type",
        choices=get_args(KvCacheType),
        type=str.lower,
        help=(
            "KV cache element type (default f16; q8_0 or q4_0 take less memory and turn flash "
            "attention on; CORRAL_KV_CACHE_TYPE, as Ollama's OLLAMA_KV_CACHE_TYPE)"
        ),
    )
    parser.add_argument(
        "--flash-attention",
        action=argparse.BooleanOptionalAction,
        help=(
            "llama.cpp's flash attention; unset: llama.cpp's choice, on wherever the devices "
            "run it, the CPU included (CORRAL_FLASH_ATTENTION)"
        ),
    )
    parser.add_argument(
        "--batch-invariant",
        action=argparse.BooleanOptionalAction,
        help=(
            "same output alone or in a batch (default); --no-batch-invariant: llama.cpp's "
            "row-count-dependent CPU kernels, faster for some models (CORRAL_BATCH_INVARIANT)"
        ),
    )
    parser.add_argument(
        "--warm-turns",
        action=argparse.BooleanOptionalAction,
        help=(
            "an idle slot evaluates its finished answer again for the conversation's next turn "
            "(default); --no-warm-turns for one-shot traffic (CORRAL_WARM_TURNS)"
        ),
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> RuntimeSettings:
    overrides = {
        key: getattr(args, key)
        for key in (
            "host",
            "port",
            "models",
            "api_key",
            "admin_api_key",
            "management",
            "allowed_hosts",
            "allowed_origins",
            "pull_allowed_hosts",
            "pull_allow_insecure",
            "pull_allow_local_paths",
            "graceful_shutdown_seconds",
            "parallel",
            "max_queue",
            "queue_timeout_seconds",
            "context_length",
            "max_loaded_models",
            "preload",
            "gpu_layers",
            "keep_alive_seconds",
            "threads",
            "kv_cache_type",
            "flash_attention",
            "batch_invariant",
            "warm_turns",
        )
        if getattr(args, key, None) is not None
    }
    try:
        return RuntimeSettings(**overrides)
    except ValidationError as exc:
        # One line per setting, not pydantic's dump: "Error: keep-alive: invalid …".
        sys.stderr.write(settings_error(exc) + "\n")
        raise SystemExit(2) from None  # as argparse's own errors


def settings_error(exc: ValidationError) -> str:
    """A ``ValidationError`` of RuntimeSettings as ``Error: <setting>: <problem>``, one line per
    setting, as every ``corral`` command reports an error (a check across settings names its
    setting in its message)."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            field = str(error["loc"][0])
            name = field.removeprefix("CORRAL_").lower().removesuffix("_seconds").replace("_", "-")
            message = f"{name}: {message}"
        lines.append(f"Error: {message}")
    return "\n".join(lines)


def _keep_alive(text: str) -> float:
    try:
        return parse_default_keep_alive(text)
    except InvalidKeepAliveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.management and settings.admin_api_key is None and not _loopback(settings.host):
        logging.getLogger(__name__).warning(
            "model management is served on %s to %s; set --admin-api-key or --no-management",
            settings.host,
            "every holder of the API key" if settings.api_key else "every client",
        )
    # uvicorn's loop is asyncio (named below), so asyncio.run is the loop it would make.
    asyncio.run(serve(settings, args.log_level, engine_first=settings.early_engine_import))
    return 0


async def serve(settings: RuntimeSettings, log_level: str, *, engine_first: bool) -> None:
    """Serve until shut down. ``engine_first``: start the engine (llama.cpp's bindings, then the
    preload) before the web stack is imported, and import it in a thread once the preload's load
    has begun, so that a preloaded model's load (llama.cpp's C code, without the GIL) overlaps
    the imports of uvicorn, FastAPI and the API modules rather than following them, and the
    checks before the load (Python, as those imports) do not share the GIL with them."""
    if not engine_first:
        await (await asyncio.to_thread(web_server, settings, log_level, None)).serve()
        return

    from corral_runtime.startup import start_engine

    # Its metrics are made once the app's creation reads them, beside the preload's load.
    engine = start_engine(settings)
    try:
        server = await web_server_beside(engine, settings, log_level)
        if server is None:
            logging.getLogger(__name__).info("shut down before serving")
            return
        await server.serve()
    finally:
        # A load under way stops at its next progress step; one that has none to come soon
        # (llama.cpp reads a mapped file whole before its first) is not waited for.
        closing = asyncio.ensure_future(engine.close())
        done, _ = await asyncio.wait({closing}, timeout=ABANDONED_LOAD_WAIT_SECONDS)
        if not done:
            exit_unclosed()
        closing.result()


async def web_server_beside(
    engine: Engine, settings: RuntimeSettings, log_level: str
) -> Server | None:
    """The web server over ``engine``, its stack imported once the preload's load has begun;
    None if a shutdown signal came first (``shutdown_signals``).

    numpy and llama-cpp-python's high-level half, which the preload's load imports in a thread,
    wait until the web stack is imported (or not): both are Python and share the GIL, so the
    server is ready sooner, and a first request waits for the later of the two either way
    (``engine.bindings``). The hold comes before the preload's task first runs (at the first
    await below), so before its load."""
    from corral_runtime.engine.bindings import (
        hold_background_completion,
        release_background_completion,
    )

    hold_background_completion()
    with shutdown_signals(asyncio.get_running_loop()) as stopped:
        try:
            await first_of(engine.load_begun(WEB_IMPORT_HOLD_SECONDS), stopped.wait())
            if stopped.is_set():
                return None
            server = await asyncio.to_thread(web_server, settings, log_level, engine)
        finally:
            release_background_completion()
        return None if stopped.is_set() else server


@contextlib.contextmanager
def shutdown_signals(loop: asyncio.AbstractEventLoop) -> Iterator[asyncio.Event]:
    """An event SIGTERM or SIGINT sets while the block runs, in place of their default action.

    Before uvicorn's server serves (and installs its own handlers), the engine starts and the
    web stack is imported: a second or so in which a pod deleted during its start would die of
    the signal (exit status 143, no log of why) with the preload's load half done. Caught
    instead, the start ends there and the process leaves through the engine's close, as any
    shutdown does. The handlers are removed on leaving, before uvicorn installs its own."""
    stopped = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopped.set)
    try:
        yield stopped
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` ends; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def exit_unclosed() -> NoReturn:
    """End the process at once: shut down, the models did not close within
    ``ABANDONED_LOAD_WAIT_SECONDS`` (a load under way, abandoned, has not reached a progress
    step). Waiting for it (minutes for a large model read from a slow volume) would keep a
    deleted pod, and its GPU, until the kubelet kills it at the end of its grace. ``os._exit``
    skips the interpreter's finalization, which would otherwise run (llama.cpp's static
    destructors among it) under the thread still loading; the system frees what it holds."""
    logging.getLogger(__name__).info(
        "the models did not close within %.0f s of the shutdown (a load under way stops only at"
        " llama.cpp's next progress step): exiting without waiting for them",
        ABANDONED_LOAD_WAIT_SECONDS,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def web_server(settings: RuntimeSettings, log_level: str, engine: Engine | None) -> Server:
    """The app over ``engine`` (None: its lifespan starts one) in uvicorn's server, which on
    SIGTERM drains (new requests 503, those in flight finish) and then shuts down; its first
    signal also abandons the model loads under way (the preload's, a request's), so a request
    waiting for a load gets a 503 at once (another server answers it) rather than keeping a pod
    being deleted for a model it would unload moments after loading it."""
    import uvicorn

    from corral_runtime.app import create_app
    from corral_runtime.shutdown import DrainingServer

    app = create_app(settings, engine)

    class AbandoningServer(DrainingServer):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # The lifespan sets it before uvicorn serves; a signal before that finds no load
            # of the app's own (``Engine.close`` abandons the preload's).
            manager: ModelManager | None = getattr(app.state, "models", None)
            if manager is not None:
                manager.abandon_loads()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        # Named, not uvicorn's "auto": the runtime's image has h11 and asyncio only, and a
        # machine that also has httptools or uvloop (the gateway's) must serve the same way.
        http="h11",
        loop="asyncio",
    )
    return AbandoningServer(config, app.state.drain, settings.graceful_shutdown_seconds)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

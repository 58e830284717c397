"""A cold ``corral serve``: its first ``/readyz`` 200 still means "can serve now" while
llama.cpp's bindings are imported in the background (``CORRAL_EARLY_ENGINE_IMPORT``, the
default) as when they are imported on first use: the request sent the moment it is ready loads
the model and is answered."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from corral_runtime.cli import SERVE_PROVIDER, command_providers, providers_for
from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext, LoadAbort
from corral_runtime.engine.probe import probe_model
from corral_runtime.engine.types import EngineError
from corral_runtime.store.digests import blob_filename
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model
from devstack.controlplane import free_port
from tests.support.serveproc import (
    ServedProcess,
    running_process,
    serve_command,
    serving_process,
)

pytestmark = pytest.mark.runtime

READY_TIMEOUT_SECONDS = 60.0


def first_ready(client: httpx.Client) -> httpx.Response:
    """The first ``/readyz`` answer that is 200 (polled every 10 ms)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.01)


def name_three_colours(client: httpx.Client) -> httpx.Response:
    """A short greedy generate of the test model, not streamed."""
    return client.post(
        "/api/generate",
        json={
            "model": TEST_MODEL_NAME,
            "prompt": "Name three colours.",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 4},
        },
    )


@contextmanager
def ready_server(
    store: ModelStore, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServedProcess, httpx.Client]]:
    """A one-slot ``corral serve`` (two threads) with ``args``, and a client, once the server
    first answers ``/readyz`` 200."""
    with (
        serving_process(
            store.root, "--threads", "2", "--parallel", "1", *args, log=log, env=env
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=300) as client,
    ):
        ready = first_ready(client)
        assert ready.status_code == 200, server.log_tail()
        yield server, client


@pytest.mark.parametrize("early_import", ["true", "false"])
def test_the_request_sent_when_first_ready_is_served(
    model_store: ModelStore, tmp_path: Path, early_import: str
) -> None:
    log = tmp_path / "serve.log"
    env = {"CORRAL_EARLY_ENGINE_IMPORT": early_import}
    with ready_server(model_store, log, env=env) as (server, client):
        ready = client.get("/readyz")
        assert ready.json() == {"status": "ready", "models": []}
        answer = name_three_colours(client)
        assert answer.status_code == 200, server.log_tail()
        body = answer.json()
        assert body["response"]
        assert body["load_duration"] > 0  # this request loaded the model
        assert client.get("/readyz").json() == {"status": "ready", "models": [TEST_MODEL_NAME]}
        assert "Traceback" not in server.log.read_text(errors="replace")


def loaded_names(client: httpx.Client) -> list[str]:
    return [m["name"] for m in client.get("/api/ps").json()["models"]]


def test_a_preloaded_model_loads_before_any_request(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # A missing name and a path out of the store first: each failure is logged and the next
    # name still loads.
    preload = f"nosuch:model,../../etc/passwd,{TEST_MODEL_NAME}"
    with ready_server(model_store, tmp_path / "serve.log", "--preload", preload) as (
        server,
        client,
    ):
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while TEST_MODEL_NAME not in loaded_names(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loaded_names(client) == [TEST_MODEL_NAME], server.log_tail()
        answer = client.post(
            "/api/generate",
            json={
                "model": TEST_MODEL_NAME,
                "prompt": "Hi",
                "stream": False,
                "options": {"num_predict": 2},
            },
        )
        assert answer.status_code == 200, answer.text
        # The request found the model loaded: no load of its own.
        assert answer.json()["load_duration"] < 50_000_000
        log = (tmp_path / "serve.log").read_text()
        assert "preloading nosuch:model failed" in log
        assert "preloading ../../etc/passwd failed" in log
        assert "preloaded " + TEST_MODEL_NAME in log


def test_a_request_during_the_preload_waits_for_it(model_store: ModelStore, tmp_path: Path) -> None:
    with ready_server(model_store, tmp_path / "serve.log", "--preload", TEST_MODEL_NAME) as (
        _,
        client,
    ):
        answer = name_three_colours(client)
        assert answer.status_code == 200, answer.text
        assert answer.json()["response"]
        # One load, shared: the request's and the preload's.
        assert (tmp_path / "serve.log").read_text().count(f"loaded {TEST_MODEL_NAME} (") == 1


# ``corral serve``'s own start, with uvicorn's part replaced: the replacement waits until the
# preloaded model is loaded, then names the web modules imported so far and stops the server.
ENGINE_FIRST = """
import asyncio, sys, time
from corral_runtime.commands import serve as command
from corral_runtime.settings import RuntimeSettings


class Loaded(Exception):
    pass


def web_server(settings, log_level, engine):
    deadline = time.monotonic() + 60
    while not engine.manager.loaded():
        if time.monotonic() > deadline:
            raise TimeoutError("the preload waited for the web stack")
        time.sleep(0.01)
    print(" ".join(m for m in ("fastapi", "starlette", "uvicorn") if m in sys.modules))
    raise Loaded


command.web_server = web_server
settings = RuntimeSettings(models=sys.argv[1], preload=[sys.argv[2]], threads=2, parallel=1)
try:
    asyncio.run(command.serve(settings, "info", engine_first=True))
except Loaded:
    print("loaded before the web stack")
"""


def test_the_preload_loads_the_model_before_the_web_stack_is_imported(
    model_store: ModelStore,
) -> None:
    # A cold pod's load overlaps the web stack's imports only if it needs none of them.
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_FIRST, str(model_store.root), TEST_MODEL_NAME],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.splitlines() == ["", "loaded before the web stack"], result.stderr[-2000:]


# ``corral serve`` whose loads take two minutes before llama.cpp's, as a large model's can, asking
# the load's progress callback every 10 ms as llama.cpp asks it between tensors (without the GIL
# meanwhile, as llama.cpp's loader runs); a False answer stops the load, which then returns NULL
# as llama.cpp's does. With SLOW_LOAD_STEPS=0 it never asks, as llama.cpp reading a mapped file
# whole before its first step. Each load says when it starts; the interpreter's own shutdown
# says it ran (``os._exit`` would skip it).
SLOW_LOADS = """
import atexit, os, sys, time
import llama_cpp
from corral_runtime.cli import main

load_from_file = llama_cpp.llama_model_load_from_file


def slow_load_from_file(path, params):
    print("slow load started", flush=True)
    deadline = time.monotonic() + 120
    steps = os.environ.get("SLOW_LOAD_STEPS") != "0"
    while time.monotonic() < deadline:
        if steps and params.progress_callback and not params.progress_callback(0.0, None):
            return None
        time.sleep(0.01)
    return load_from_file(path, params)


llama_cpp.llama_model_load_from_file = slow_load_from_file
atexit.register(print, "the interpreter shut down", flush=True)
sys.exit(main(sys.argv[1:]))
"""


@contextmanager
def slow_loading_server(
    store: ModelStore,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    script: str = SLOW_LOADS,
) -> Iterator[tuple[ServedProcess, httpx.Client]]:
    """``corral serve ARGS…`` whose loads take two minutes (``SLOW_LOADS``, or what ``script``
    slows down), and a client."""
    port = free_port()
    serve = serve_command(port, store.root, "--threads", "2", "--parallel", "1", *args)
    command = [sys.executable, "-c", script, *serve[serve.index("serve") :]]
    with (
        running_process("corral serve", command, port, log, env or {}, 60) as server,
        httpx.Client(base_url=server.base_url, timeout=60) as client,
    ):
        yield server, client


def wait_for_line(server: ServedProcess, line: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while line not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline and server.alive(), server.log_tail()
        time.sleep(0.02)


def sigterm_during_the_preload(
    store: ModelStore, log: Path, env: dict[str, str], within: float
) -> str:
    """SIGTERM to a slow-loading ``corral serve --preload`` once its load started: it exits 0
    within ``within`` seconds, through uvicorn's shutdown, without a traceback; its log."""
    with slow_loading_server(store, log, "--preload", TEST_MODEL_NAME, env=env) as (server, _):
        wait_for_line(server, "slow load started")
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert time.monotonic() - started < within, server.log_tail()
    text = log.read_text()
    assert "Application shutdown complete." in text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("early_import", ["true", "false"])
def test_sigterm_during_a_preload_abandons_the_load_and_exits_normally(
    model_store: ModelStore, tmp_path: Path, early_import: str
) -> None:
    # A pod deleted while it loads goes at once, not at the end of its grace (SIGKILL), and
    # through its normal shutdown: the load stops at its next progress step. The preload runs
    # before the web stack's import, or (false) in the app's lifespan.
    env = {"CORRAL_EARLY_ENGINE_IMPORT": early_import}
    text = sigterm_during_the_preload(model_store, tmp_path / "serve.log", env, within=5)
    assert f"abandoned the preload of {TEST_MODEL_NAME}: the server is shutting down" in text
    assert text.rstrip().endswith("the interpreter shut down"), text[-2000:]


def test_sigterm_during_a_load_without_progress_steps_exits_without_waiting_for_it(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # llama.cpp reads a mapped file whole before its first progress step: minutes for a large
    # model on a slow volume. The pod still goes within moments of its shutdown, not at the end
    # of its grace (SIGKILL).
    env = {"SLOW_LOAD_STEPS": "0"}
    text = sigterm_during_the_preload(model_store, tmp_path / "serve.log", env, within=10)
    assert "the models did not close within 2 s of the shutdown" in text, text[-2000:]


def test_sigterm_during_a_requests_load_answers_it_503_at_once(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # The request waiting for its model's load is answered (in the API's shape, to be tried on
    # another server) rather than holding the drain until the load ends or the grace is spent.
    log = tmp_path / "serve.log"
    with (
        slow_loading_server(model_store, log, "--graceful-shutdown", "60") as (server, client),
        ThreadPoolExecutor(1) as pool,
    ):
        answer = pool.submit(name_three_colours, client)
        wait_for_line(server, "slow load started")
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        refused = answer.result(timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"error": "the server is shutting down; try again"}
        assert refused.headers["retry-after"] == "1"
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert time.monotonic() - started < 5, server.log_tail()
    text = log.read_text()
    assert f"abandoned the load of {TEST_MODEL_NAME}: the server is shutting down" in text
    assert text.rstrip().endswith("the interpreter shut down"), text[-2000:]


def generate_then_hang_up(server: ServedProcess, started: Callable[[], bool] | None = None) -> None:
    """Ask for a generate on a connection of its own, and close it once its load started
    (``started`` says so; by default, the server logged "slow load started" once more)."""
    body = json.dumps({"model": TEST_MODEL_NAME, "prompt": "Hi", "stream": False}).encode()
    if started is None:
        before = server.log.read_text().count("slow load started")

        def started() -> bool:
            return server.log.read_text().count("slow load started") > before

    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not started():
            assert time.monotonic() < deadline and server.alive(), server.log_tail()
            time.sleep(0.02)


def test_a_load_whose_client_went_away_stops(model_store: ModelStore, tmp_path: Path) -> None:
    # Its worker would be closed once loaded, so the load stops, and the next request's load
    # starts at once instead of after it.
    log = tmp_path / "serve.log"
    with slow_loading_server(model_store, log) as (server, _):
        generate_then_hang_up(server)
        wait_for_line(server, f"stopping the load of {TEST_MODEL_NAME}: the request that")
        stopped = time.monotonic()
        generate_then_hang_up(server)
        assert time.monotonic() - stopped < 5, server.log_tail()


# ``corral serve`` whose checks of a model before llama.cpp's load are slow, as a large model's
# first ones are: with SLOW_CHECK=hash its blob's hash reads 1 MiB blocks taking half a second
# each (the test model's: two minutes, as a multi-GB blob's on a slow volume), with
# SLOW_CHECK=probe its probe's child writes its pid to PROBE_PID_FILE and sleeps two minutes
# before probing. Each hash of a blob and each probe say when they start.
SLOW_CHECKS = """
import atexit, os, sys, time
from corral_runtime.cli import main
from corral_runtime.engine import probe
from corral_runtime.store import layout

SLOW = os.environ.get("SLOW_CHECK", "")
SLOW_PROBE = (
    "import os, sys, time\\n"
    "pid = os.environ['PROBE_PID_FILE']\\n"
    "with open(pid + '.tmp', 'w') as f: f.write(str(os.getpid()))\\n"
    "os.rename(pid + '.tmp', pid)\\n"
    "time.sleep(120)\\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'corral_runtime.engine.probe', sys.argv[1]])"
)
hash_stream = layout.sha256_stream


class SlowReads:
    def __init__(self, f):
        self.f = f

    def read(self, size):
        time.sleep(0.5)
        return self.f.read(min(size, 1 << 20))


def announced_hash(f, *stop):
    print("the hash started", flush=True)
    return hash_stream(SlowReads(f) if SLOW == "hash" else f, *stop)


def announced_probe(path):
    print("the probe started", flush=True)
    return [sys.executable, "-c", SLOW_PROBE, str(path)] if SLOW == "probe" else probe_child(path)


layout.sha256_stream = announced_hash
probe_child = probe.probe_command
probe.probe_command = announced_probe
atexit.register(print, "the interpreter shut down", flush=True)
sys.exit(main(sys.argv[1:]))
"""


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (no such process, or a zombie its new parent has yet to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("slow", ["hash", "probe"])
def test_sigterm_during_a_first_verification_stops_it_and_the_next_start_verifies_again(
    tmp_path: Path, slow: str
) -> None:
    # A pod deleted while it checks a large model for the first time (its blob's sha256, its
    # probe in a child process) goes at once and through its normal shutdown, not after the
    # whole check (or, past the 2 s the shutdown waits, by exiting with a child left behind);
    # the check records nothing, so the next start checks the blob again before loading it.
    store = ModelStore(tmp_path / "models")
    stored = ensure_test_model(store)
    verified = store.root / ".corral" / "verified" / blob_filename(stored.model_digest)
    probed = store.root / ".corral" / "loads" / blob_filename(stored.model_digest)
    if slow == "hash":
        verified.unlink()  # the import hashed it; a blob another pod wrote was not
    pid_file = tmp_path / "probe.pid"
    env = {"SLOW_CHECK": slow, "PROBE_PID_FILE": str(pid_file)}
    log = tmp_path / "serve.log"
    preload = ("--preload", TEST_MODEL_NAME)
    with slow_loading_server(store, log, *preload, env=env, script=SLOW_CHECKS) as (server, _):
        if slow == "hash":
            wait_for_line(server, "the hash started")
        else:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not pid_file.exists():
                assert time.monotonic() < deadline and server.alive(), server.log_tail()
                time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert time.monotonic() - started < 5, server.log_tail()
    text = log.read_text()
    assert f"abandoned the verification of {TEST_MODEL_NAME}: the server is shutting down" in text
    assert f"abandoned the preload of {TEST_MODEL_NAME}: the server is shutting down" in text
    assert "Traceback" not in text
    assert text.rstrip().endswith("the interpreter shut down"), text[-2000:]
    assert not probed.exists()
    if slow == "hash":
        assert not verified.exists()
    else:
        assert gone(int(pid_file.read_text()))

    again = tmp_path / "again.log"
    with slow_loading_server(store, again, script=SLOW_CHECKS) as (_, client):
        answer = name_three_colours(client)
        assert answer.status_code == 200, answer.text
    assert ("the hash started" in again.read_text()) == (slow == "hash")
    assert verified.exists() and probed.exists()


def test_a_verification_whose_client_went_away_kills_its_probe(tmp_path: Path) -> None:
    # The probe of a large model would go on for nothing: its load stops, its child with it.
    store = ModelStore(tmp_path / "models")
    ensure_test_model(store)
    pid_file = tmp_path / "probe.pid"
    env = {"SLOW_CHECK": "probe", "PROBE_PID_FILE": str(pid_file)}
    with slow_loading_server(store, tmp_path / "serve.log", env=env, script=SLOW_CHECKS) as (
        server,
        _,
    ):
        generate_then_hang_up(server, pid_file.exists)
        wait_for_line(server, f"stopping the verification of {TEST_MODEL_NAME}: the request that")
        deadline = time.monotonic() + 10
        while not gone(int(pid_file.read_text())):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.02)


def test_llama_cpp_stops_a_load_whose_switch_is_set(model_store: ModelStore) -> None:
    # The slow loads above ask the callback as llama.cpp does; here llama.cpp itself asks it
    # and stops (NULL) on False, and a load whose switch is not set goes on.
    path = model_store.get(TEST_MODEL_NAME).model_path
    config = ContextConfig(model_path=path, n_ctx=256, parallel=1, n_batch=64, n_threads=2)
    switch = LoadAbort()
    switch.abort("the server is shutting down")
    with pytest.raises(EngineError, match=r"^the load was abandoned: the server is shutting down$"):
        LlamaBatchContext(replace(config, abort=switch))
    context = LlamaBatchContext(replace(config, abort=LoadAbort()))
    context.close()


# ``corral serve`` that says, as llama.cpp's load of a model starts, whether llama-cpp-python's
# high-level half (``llama_cpp.Llama``), numpy, the web stack (FastAPI, uvicorn) and the other
# packages' commands (the operator's) have been imported by then: its bindings'
# llama_model_load_from_file is wrapped as they are imported, before anything takes it from them.
LOAD_WATCH = """
import importlib.machinery, sys
from corral_runtime.cli import main
from corral_runtime.commands import serve

# The order is what is watched: on a busy machine the checks before the load may outlast the
# hold, after which the web stack's import no longer waits for the load.
serve.WEB_IMPORT_HOLD_SECONDS = 60
web_server = serve.web_server


def watched_web_server(*args):
    server = web_server(*args)
    numpy = sys.modules.get("numpy")
    imported = numpy is not None and "ndarray" in vars(numpy)
    print("the web stack imported; numpy imported:", imported, flush=True)
    return server


serve.web_server = watched_web_server


def watched(load):
    def load_from_file(path, params):
        numpy = sys.modules.get("numpy")
        imported = {
            "llama_cpp.Llama": "Llama" in vars(sys.modules["llama_cpp"]),
            "numpy": numpy is not None and "ndarray" in vars(numpy),
            **{
                name: name in sys.modules
                for name in ("fastapi", "uvicorn", "corral_operator", "jinja2", "prometheus_client")
            },
        }
        print("the load started; imported:", imported, flush=True)
        return load(path, params)

    return load_from_file


class WatchTheBindings:
    def find_spec(self, name, path, target=None):
        if name != "llama_cpp.llama_cpp":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.llama_model_load_from_file = watched(module.llama_model_load_from_file)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, WatchTheBindings())
sys.exit(main(sys.argv[1:]))
"""


def test_the_preloads_load_starts_before_numpy_the_high_level_half_and_the_web_stack(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # A cold pod's load waits only for llama.cpp's ctypes bindings and the checks of its blob;
    # the ~0.2 s of numpy and llama-cpp-python's high-level half, the ~0.4 s of the web stack
    # and the chat templates (jinja2), and the metrics (prometheus_client) are imported while
    # it runs (not beside the checks, sharing the GIL), and the other packages' commands not
    # at all; numpy waits for the web stack's import. The complete package is there
    # afterwards: an embedding (llama_cpp.Llama) and a generate (numpy) are answered, and the
    # load is counted in the metrics. The blob is
    # probed already, as a pod's pull Job leaves it: a new blob's probe is waited for apart
    # (``Engine.load_begun``).
    probe_model(model_store, model_store.get(TEST_MODEL_NAME))
    port = free_port()
    serve = serve_command(
        port, model_store.root, "--threads", "2", "--parallel", "1", "--preload", TEST_MODEL_NAME
    )
    command = [sys.executable, "-c", LOAD_WATCH, *serve[serve.index("serve") :]]
    log = tmp_path / "serve.log"
    with (
        running_process("corral serve", command, port, log, {}, 60) as server,
        httpx.Client(base_url=server.base_url, timeout=300) as client,
    ):
        wait_for_line(server, f"preloaded {TEST_MODEL_NAME}")
        # Counted by the metrics made meanwhile.
        metrics = client.get("/metrics").text
        assert f'corral_model_load_seconds_count{{model="{TEST_MODEL_NAME}"}} 1.0' in metrics
        generated = name_three_colours(client)
        assert generated.status_code == 200, generated.text
        embedded = client.post("/api/embed", json={"model": TEST_MODEL_NAME, "input": "Hi"})
        assert embedded.status_code == 200, embedded.text
        assert len(embedded.json()["embeddings"][0]) > 0
    text = log.read_text()
    # The first load, the preload's (the embedding's own context loads the model again).
    started = next(line for line in text.splitlines() if line.startswith("the load started"))
    assert started == (
        "the load started; imported: {'llama_cpp.Llama': False, 'numpy': False, "
        "'fastapi': False, 'uvicorn': False, 'corral_operator': False, 'jinja2': False, "
        "'prometheus_client': False}"
    ), text[-2000:]
    # Then the web stack, before numpy: both are Python, and the server is ready sooner.
    assert "the web stack imported; numpy imported: False" in text.splitlines(), text[-2000:]
    assert "Traceback" not in text


def test_corral_serve_parses_its_command_line_with_its_installed_provider_alone() -> None:
    # The one module ``corral serve`` loads is the one its entry point names, and no other
    # command's: the load above starts without the operator's commands imported.
    installed = [(p.name, p.value) for p in command_providers() if p.name == "serve"]
    assert installed == [(SERVE_PROVIDER.name, SERVE_PROVIDER.value)]
    assert providers_for(["serve", "--preload", TEST_MODEL_NAME]) == [SERVE_PROVIDER]
    assert providers_for(["list"]) is None
    assert providers_for([]) is None

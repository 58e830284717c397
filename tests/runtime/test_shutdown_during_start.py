"""A shutdown signal during ``corral serve``'s start, before uvicorn serves.

The engine starts (and the preload's load begins) before the web stack is imported, so for up
to a second or so of a pod's start no uvicorn handler is installed yet. A pod deleted then
leaves through the engine's close, exit status 0 with its reason logged, rather than dying of
the signal (143) with its load half done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME
from devstack.controlplane import free_port
from tests.support.serveproc import serve_command

pytestmark = pytest.mark.runtime

# ``corral serve`` whose web stack's import waits (in its thread, as a slow import would) until
# the file named by HELD_IMPORT_RELEASE exists, and whose loads never end by themselves but stop
# at a set abort switch, as a real load's progress steps do.
HELD_WEB_IMPORT = """
import atexit, os, sys, time
import llama_cpp
from corral_runtime.cli import main
from corral_runtime.commands import serve

web_server = serve.web_server
release = os.environ["HELD_IMPORT_RELEASE"]


def held_web_server(*args):
    print("web stack import held", flush=True)
    while not os.path.exists(release):
        time.sleep(0.01)
    return web_server(*args)


def endless_load(path, params):
    print("endless load started", flush=True)
    while params.progress_callback(0.0, None):
        time.sleep(0.01)
    return None


serve.web_server = held_web_server
llama_cpp.llama_model_load_from_file = endless_load
atexit.register(print, "the interpreter shut down", flush=True)
sys.exit(main(sys.argv[1:]))
"""


def wait_for(process: subprocess.Popen[str], log: Path, line: str) -> None:
    deadline = time.monotonic() + 60
    while line not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def test_sigterm_before_uvicorn_serves_ends_the_start_through_the_engines_close(
    model_store: ModelStore, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    release = tmp_path / "release"
    serve = serve_command(free_port(), model_store.root, "--preload", TEST_MODEL_NAME)
    command = [sys.executable, "-c", HELD_WEB_IMPORT, *serve[serve.index("serve") :]]
    env = {**os.environ, "HELD_IMPORT_RELEASE": str(release)}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, text=True, env=env
        )
    try:
        wait_for(process, log, "endless load started")
        wait_for(process, log, "web stack import held")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the signal is taken while the import still runs
        release.touch()
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert f"abandoned the preload of {TEST_MODEL_NAME}: the server is shutting down" in text
    assert "shut down before serving" in text
    assert "Uvicorn running" not in text
    assert "Traceback" not in text
    assert text.rstrip().endswith("the interpreter shut down"), text[-2000:]

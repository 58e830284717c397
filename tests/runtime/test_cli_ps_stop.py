"""``corral serve`` bound by Ollama's ``OLLAMA_HOST``, and ``corral ps`` / ``corral stop`` against
it as a user runs them: the real CLI as a process, the real server as another, both finding each
other through the one variable, as ``ollama serve`` and ``ollama ps`` do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral_runtime.store.layout import ModelStore
from devstack.controlplane import free_port
from tests.runtime.conftest import TEST_NUM_CTX
from tests.support.serveproc import ServedProcess, running_process

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
HEADER = "NAME   ID   SIZE   PROCESSOR   CONTEXT   UNTIL"
# Variables that would name another address than OLLAMA_HOST, to the server or to the CLI.
OTHER_ADDRESSES = ("CORRAL_HOST", "CORRAL_PORT")


@pytest.fixture(scope="module")
def ollama_host() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def served(
    model_store: ModelStore, ollama_host: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedProcess]:
    """``corral serve`` told nothing of its address but OLLAMA_HOST."""
    command = [
        *(sys.executable, "-m", "corral_runtime.cli", "serve"),
        *("--models", str(model_store.root), "--context-length", str(TEST_NUM_CTX)),
        *("--threads", "2", "--log-level", "warning"),
    ]
    port = int(ollama_host.rsplit(":", 1)[1])
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with pytest.MonkeyPatch.context() as patch:
        for name in OTHER_ADDRESSES:
            patch.delenv(name, raising=False)
        env = {"OLLAMA_HOST": ollama_host}
        with running_process("corral serve", command, port, log, env, 60) as server:
            yield server


def corral(*args: str, ollama_host: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in OTHER_ADDRESSES}
    return subprocess.run(
        [sys.executable, "-m", "corral_runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, "OLLAMA_HOST": ollama_host},
        stdin=subprocess.DEVNULL,
    )


def load(base_url: str, keep_alive: str | int) -> None:
    # Ollama's load request: a model and no prompt.
    answer = httpx.post(
        f"{base_url}/api/generate", json={"model": MODEL, "keep_alive": keep_alive}, timeout=120
    )
    assert answer.json()["done_reason"] == "load", answer.text


def test_serve_binds_where_ollama_host_says(served: ServedProcess, ollama_host: str) -> None:
    assert served.base_url == f"http://{ollama_host}"
    assert httpx.get(f"http://{ollama_host}/api/version", timeout=10).status_code == 200


def test_ps_lists_what_is_loaded_and_stop_unloads_it(
    served: ServedProcess, ollama_host: str
) -> None:
    empty = corral("ps", ollama_host=ollama_host)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, HEADER + "\n", "")

    load(served.base_url, "5m")
    listed = corral("ps", ollama_host=ollama_host)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    loaded = httpx.get(f"{served.base_url}/api/ps", timeout=10).json()["models"][0]
    size = f"{loaded['size'] // 1_000_000} MB"  # decimal units, truncated, as Ollama's
    expected = [MODEL, loaded["digest"][:12], size, "100% CPU", str(TEST_NUM_CTX)]
    assert " ".join(row.split()) == " ".join([*expected, "4 minutes from now"])

    load(served.base_url, -1)
    assert corral("ps", ollama_host=ollama_host).stdout.splitlines()[1].endswith("   Forever")

    stopped = corral("stop", MODEL, ollama_host=ollama_host)
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "", "")
    assert corral("ps", ollama_host=ollama_host).stdout == HEADER + "\n"

    # A model that is not loaded stops quietly, as in Ollama.
    again = corral("stop", MODEL, ollama_host=ollama_host)
    assert (again.returncode, again.stderr) == (0, "")


def test_stop_of_a_model_the_server_lacks_is_ollamas_error(
    served: ServedProcess, ollama_host: str
) -> None:
    result = corral("stop", "nope:1b", ollama_host=ollama_host)
    assert result.returncode == 1
    assert result.stderr == 'Error: couldn\'t find model "nope:1b" to stop\n'


def test_ps_and_stop_say_in_one_line_when_the_server_is_not_there(tmp_path: Path) -> None:
    gone = f"127.0.0.1:{free_port()}"
    for args in (("ps",), ("stop", MODEL)):
        result = corral(*args, ollama_host=gone)
        assert result.returncode == 1
        assert result.stderr.startswith(f"Error: cannot reach http://{gone}")
        assert result.stderr.count("\n") == 1

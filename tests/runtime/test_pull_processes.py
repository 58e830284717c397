"""Pulls as separate ``corral pull`` processes: killed and resumed, four at once, disk full."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_runtime.store.layout import ModelStore
from tests.support.gguf_corpus import model_of_size
from tests.support.registry import TestRegistry, running_registry

pytestmark = pytest.mark.runtime

SIZE = 24 * 1024 * 1024
GGUF = model_of_size(SIZE, seed=int.from_bytes(os.urandom(8)))  # a valid model file
DIGEST = "sha256:" + hashlib.sha256(GGUF).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry"), auth=True) as reg:
        reg.add_model("library", "big", "latest", GGUF, template="{{ .Prompt }}")
        yield reg


def corral_pull(
    registry: TestRegistry, models: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral_runtime.cli",
            "pull",
            f"ollama://{registry.host}/library/big",
            "--insecure",
            "--models",
            str(models),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def served_bytes(registry: TestRegistry, digest: str) -> int:
    """Bytes of ``digest`` the CDN was asked for (from the logged Range headers)."""
    total = 0
    for r in registry.requests("cdn"):
        if digest not in r.path:
            continue
        first, _, last = r.headers.get("Range", f"bytes=0-{SIZE - 1}")[6:].partition("-")
        total += int(last) + 1 - int(first)
    return total


def test_killed_pull_resumes_from_what_it_had(registry: TestRegistry, tmp_path: Path) -> None:
    registry.reset()
    half = SIZE // 2
    registry.faults.hold_after_bytes = half  # the CDN sends half the blob, then waits
    models = tmp_path / "models"
    sidecar = models / "blobs" / f"sha256-{DIGEST[7:]}-partial.json"
    proc = corral_pull(registry, models)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = sum(json.loads(sidecar.read_text())["done"])
        except (OSError, ValueError):
            done = 0
        if done == half:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert done == half, "the pull did not record the half it had received"
    assert not (models / "blobs" / f"sha256-{DIGEST[7:]}").exists()
    assert not (models / "manifests").exists()

    registry.reset()
    resumed = corral_pull(registry, models)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert (models / "blobs" / f"sha256-{DIGEST[7:]}").read_bytes() == GGUF
    # The second run fetched exactly what the first had not written.
    assert served_bytes(registry, DIGEST) == SIZE - half
    assert "success" in output


def test_four_concurrent_pullers_make_one_blob(registry: TestRegistry, tmp_path: Path) -> None:
    registry.reset()
    registry.faults.slow_seconds_per_mib = 0.05
    models = tmp_path / "models"
    procs = [corral_pull(registry, models) for _ in range(4)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    store = ModelStore(models)
    model = store.get(f"{registry.host}/library/big:latest")
    assert model.model_path.read_bytes() == GGUF
    assert sorted(p.name for p in store.blobs.iterdir() if "partial" in p.name) == []
    # One process downloaded; the others waited and found the blob.
    assert served_bytes(registry, DIGEST) == SIZE


def test_disk_full_is_a_clear_error_and_leaves_nothing(
    registry: TestRegistry, tmp_path: Path
) -> None:
    registry.reset()
    models = tmp_path / "models"
    result_file = tmp_path / "result.json"
    # A file-size limit makes the partial file's first write fail as a full disk would.
    limit = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({SIZE // 2}, {SIZE // 2}));"
        "sys.argv = ['corral'] + sys.argv[1:]; runpy.run_module('corral_runtime.cli', "
        "run_name='__main__')"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            limit,
            "pull",
            f"ollama://{registry.host}/library/big",
            "--insecure",
            "--models",
            str(models),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CORRAL_PULL_RESULT_FILE": str(result_file)},
    )
    assert proc.returncode == 1
    assert "no space left" in proc.stderr
    assert "no space left" in json.loads(result_file.read_text())["error"]
    leftovers = [
        p.name
        for p in (models / "blobs").iterdir()
        if "partial" in p.name or p.name.endswith(DIGEST[7:])
    ]
    assert leftovers == []
    assert not (models / "manifests").exists()

"""The images `make images` builds run for real: scripts/build-images.sh builds them (or reuses
the archives cached for the same content), a containerd of the test's own imports the archives
under the references a kubelet asks for, and each image's entry command runs in a container as
the non-root user, with a read-only root filesystem: the runtime serves the test model to the
official ollama client, the operator image's gateway answers its health check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model
from devstack.controlplane import free_port
from tests.chart.chart import ROOT

pytestmark = pytest.mark.chart

NON_ROOT = "65532:65532"  # the identity the operator's pods run as


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    archive: Path


def _cache_root() -> Path:
    configured = os.environ.get("CORRAL_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corral"


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    """Build (or reuse) the images; name -> reference and OCI archive."""
    if os.geteuid() != 0:
        pytest.fail("building and running images needs root (buildah, mmdebstrap, containerd)")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    listing = (_cache_root() / "images" / "images.tsv").read_text()
    found = {}
    for line in listing.splitlines():
        name, ref, archive = line.split("\t")
        found[name] = Image(name, ref, Path(archive))
    assert set(found) == {"corral-runtime", "corral-operator"}
    return found


def _oci_config(archive: Path) -> tuple[str, dict[str, Any]]:
    """The reference an OCI archive names its image by, and the image's config."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, Any]:
            member = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
            assert member is not None
            loaded: dict[str, Any] = json.load(member)
            return loaded

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (manifest_ref,) = json.load(index_file)["manifests"]
        manifest = blob(manifest_ref["digest"])
        config = blob(manifest["config"]["digest"])
    return manifest_ref["annotations"]["org.opencontainers.image.ref.name"], config


@pytest.mark.parametrize(
    ("name", "entrypoint", "cmd"),
    [
        ("corral-runtime", ["corral"], ["serve", "--host", "0.0.0.0", "--port", "11434"]),
        ("corral-operator", None, ["corral-operator"]),
    ],
)
def test_archive_names_the_full_reference_and_runs_as_non_root(
    images: dict[str, Image], name: str, entrypoint: list[str] | None, cmd: list[str]
) -> None:
    ref, config = _oci_config(images[name].archive)
    # A kubelet normalises a pod's image to a full reference; localhost/ stays as it is.
    assert ref == images[name].ref
    assert ref.startswith(f"localhost/{name}:")
    chart = (ROOT / "charts" / "corral" / "Chart.yaml").read_text()
    assert f'appVersion: "{ref.rpartition(":")[2]}"' in chart
    assert config["config"]["User"] == NON_ROOT
    assert config["config"].get("Entrypoint") == entrypoint
    assert config["config"]["Cmd"] == cmd


def test_a_second_build_with_nothing_changed_reuses_the_archives(
    images: dict[str, Image],
) -> None:
    before = {name: image.archive.stat().st_mtime_ns for name, image in images.items()}
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30, result.stdout
    assert result.stdout.count("is up to date") == 2, result.stdout
    assert {name: image.archive.stat().st_mtime_ns for name, image in images.items()} == before


class Containerd:
    """A containerd of the test's own (root, state and socket in one directory), without CRI."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.address = str(directory / "containerd.sock")
        config = directory / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{directory / "root"}"\n'
            f'state = "{directory / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
        )
        self.log = (directory / "containerd.log").open("wb")
        self.process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.process.poll() is None, (directory / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not answer"
            time.sleep(0.2)
        self.started: list[str] = []

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> Any:
        result = subprocess.run(
            ["ctr", "--address", self.address, "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def run(self, image: str, args: list[str], *extra: str) -> str:
        """Run a container to its end (read-only root, host network); its output."""
        cid = f"probe-{len(self.started)}"
        self.started.append(cid)
        return str(
            self.ctr("run", "--rm", "--net-host", "--read-only", *extra, image, cid, *args).stdout
        )

    def start(self, image: str, args: list[str], *extra: str) -> Path:
        """Start a container (read-only root, host network); the file its output goes to."""
        cid = f"serve-{len(self.started)}"
        self.started.append(cid)
        output = self.directory / f"{cid}.log"
        self.ctr(
            "run",
            "--detach",
            "--net-host",
            "--read-only",
            "--log-uri",
            f"file://{output}",
            *extra,
            image,
            cid,
            *args,
        )
        return output

    def close(self) -> None:
        for cid in self.started:
            self.ctr("tasks", "delete", "--force", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self.log.close()


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True)


@pytest.fixture(scope="module")
def containerd(images: dict[str, Image]) -> Iterator[Containerd]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is missing: scripts/build-images.sh installs it")
    directory = Path(tempfile.mkdtemp(prefix="corral-containerd-"))
    daemon = Containerd(directory)
    try:
        for image in images.values():
            daemon.ctr("images", "import", str(image.archive), timeout=300)
        yield daemon
    finally:
        daemon.close()
        for mount in _mounts_under(directory):
            subprocess.run(["umount", "--lazy", mount], check=False)
        assert not _mounts_under(directory)
        shutil.rmtree(directory)


@pytest.fixture(scope="module")
def model_store() -> Iterator[Path]:
    """A store holding the test model, readable by the image's non-root user."""
    directory = Path(tempfile.mkdtemp(prefix="corral-images-models-"))
    try:
        ensure_test_model(ModelStore(directory))
        for path in [directory, *directory.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


def test_runtime_image_runs_corral_as_non_root(
    images: dict[str, Image], containerd: Containerd
) -> None:
    ref = images["corral-runtime"].ref
    assert containerd.run(ref, ["id", "-u"]).strip() == "65532"
    assert "serve" in containerd.run(ref, ["corral", "--help"])


def _wait_healthy(url: str, deadline_s: float, output: Path) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered: " + output.read_text()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def runtime_port(images: dict[str, Image], containerd: Containerd, model_store: Path) -> int:
    """`corral serve` in a runtime container, serving the store (mounted read-only)."""
    port = free_port()
    output = containerd.start(
        images["corral-runtime"].ref,
        ["corral", "serve", "--host", "127.0.0.1", "--port", str(port)],
        "--mount",
        f"type=bind,src={model_store},dst=/models,options=rbind:ro",
        "--env",
        "CORRAL_MODELS=/models",
    )
    _wait_healthy(f"http://127.0.0.1:{port}/healthz", 60, output)
    return port


def test_runtime_image_serves_the_test_model(runtime_port: int) -> None:
    with ollama.Client(host=f"http://127.0.0.1:{runtime_port}") as client:
        assert [m.model for m in client.list().models] == [TEST_MODEL_NAME]
        answer = client.generate(
            model=TEST_MODEL_NAME, prompt="The capital of France is", options={"num_predict": 4}
        )
    assert answer.done and answer.eval_count and answer.eval_count > 0
    assert answer.response


def test_operator_image_runs_the_operator_and_the_gateway(
    images: dict[str, Image], containerd: Containerd, runtime_port: int
) -> None:
    ref = images["corral-operator"].ref
    assert containerd.run(ref, ["id", "-u"]).strip() == "65532"
    assert containerd.run(ref, ["sh", "-c", "command -v corral-operator"]).strip()
    # The gateway (the chart's command for it) in front of the runtime container.
    port = free_port()
    servers = {"images": {"models": [TEST_MODEL_NAME], "endpoints": [f"127.0.0.1:{runtime_port}"]}}
    output = containerd.start(
        ref,
        ["python", "-m", "corral_operator.gateway"],
        "--env",
        "CORRAL_GATEWAY_HOST=127.0.0.1",
        "--env",
        f"CORRAL_GATEWAY_PORT={port}",
        "--env",
        f"CORRAL_GATEWAY_STATIC_SERVERS={json.dumps(servers)}",
    )
    _wait_healthy(f"http://127.0.0.1:{port}/healthz", 60, output)
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused") as client:
        answer = client.chat.completions.create(
            model=TEST_MODEL_NAME,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=4,
        )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0

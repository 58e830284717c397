"""Unit tests for what gives the node agent's containers in-cluster config: the ``kubernetes``
Service's variables, its Endpoints, and the split of mounts into bind mounts and rewrites (with
the shell that makes the bind mounts, run for real in a private mount namespace)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.nodeagent.kube import kubernetes_endpoint
from tests.support.nodeagent.podspec import (
    Bind,
    bind_command,
    kubernetes_service_env,
    mount_plan,
)
from tests.support.nodeagent.worker import hides_nothing

pytestmark = pytest.mark.unit

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def test_kubernetes_service_env_names_the_endpoint() -> None:
    env = kubernetes_service_env("10.96.0.1", 6443)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "6443"
    assert env["KUBERNETES_PORT"] == "tcp://10.96.0.1:6443"
    assert env["KUBERNETES_PORT_6443_TCP_ADDR"] == "10.96.0.1"


def test_kubernetes_endpoint_is_the_first_address_with_a_port() -> None:
    endpoints = {
        "subsets": [
            {"addresses": [], "ports": [{"port": 1}]},
            {"addresses": [{"ip": "10.96.0.1"}], "ports": [{"name": "https", "port": 6443}]},
        ]
    }
    assert kubernetes_endpoint(endpoints) == ("10.96.0.1", 6443)
    assert kubernetes_endpoint({}) is None
    assert kubernetes_endpoint({"subsets": [{"notReadyAddresses": [{"ip": "1.2.3.4"}]}]}) is None


def _container(*mounts: dict[str, object]) -> dict[str, object]:
    return {"name": "c", "volumeMounts": list(mounts)}


def test_mount_plan_binds_where_nothing_is_hidden_and_rewrites_the_rest(tmp_path: Path) -> None:
    volumes = {"token": tmp_path / "token", "tmp": tmp_path / "tmp", "models": tmp_path / "m"}
    container = _container(
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "token", "mountPath": TOKEN_PATH + "/", "readOnly": True},
        {"name": "models", "mountPath": "/models"},
        {"name": "models", "mountPath": "/models/sub", "subPath": "s"},
        {"name": "tmp", "mountPath": "/tmp/cache", "subPath": "c"},
    )
    # /tmp holds the host's files; everything else is free.
    plan = mount_plan(container, volumes, lambda path, local: path != "/tmp")
    assert plan.binds == [
        Bind("/models", tmp_path / "m", read_only=False),
        Bind("/models/sub", tmp_path / "m" / "s", read_only=False),
        Bind(TOKEN_PATH, tmp_path / "token", read_only=True),
    ]
    # Below a rewritten mount stays rewritten, even where a bind would hide nothing.
    assert plan.rewrites == [("/tmp/cache", tmp_path / "tmp" / "c"), ("/tmp", tmp_path / "tmp")]


def test_hides_nothing(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert hides_nothing(str(tmp_path / "missing" / "deeper"), volume)
    assert hides_nothing(str(tmp_path / "empty"), volume)
    assert not hides_nothing(str(tmp_path / "full"), volume)
    assert not hides_nothing(str(tmp_path / "empty"), tmp_path / "full" / "f")  # a file volume


def test_bind_command_without_binds_is_the_argv() -> None:
    assert bind_command([], "/w", ["/bin/true", "x"]) == ["/bin/true", "x"]


@pytest.mark.skipif(
    subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs CAP_SYS_ADMIN for a mount namespace",
)
def test_bind_command_mounts_in_a_private_namespace(tmp_path: Path) -> None:
    token, data = tmp_path / "token", tmp_path / "data"
    token.mkdir()
    data.mkdir()
    (token / "token").write_text("secret\n")
    target = tmp_path / "var" / "run" / "secrets"  # missing: created as the mountpoint
    binds = [Bind(str(target), token, read_only=True), Bind(str(tmp_path / "d"), data, False)]
    script = (
        f'cat {target}/token; pwd; echo w > "$PWD/f"; echo no > {target}/x 2>/dev/null; echo $?'
    )
    done = subprocess.run(
        bind_command(binds, str(tmp_path / "d"), ["/bin/sh", "-c", script]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "secret"
    assert lines[1].endswith("/d")  # the working directory is inside the bind
    assert lines[2] != "0"  # read-only
    assert (data / "f").read_text() == "w\n"
    # Nothing is mounted outside: the mountpoint is left, empty.
    assert target.is_dir() and not any(target.iterdir())


@pytest.mark.skipif(
    subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs CAP_SYS_ADMIN for a mount namespace",
)
def test_bind_command_as_a_prefix_for_exec_probes(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "healthy").write_text("yes\n")
    target = str(tmp_path / "mnt")
    prefix = bind_command([Bind(target, volume, read_only=False)], "/", [])
    done = subprocess.run(
        [*prefix, "cat", f"{target}/healthy"], capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, "yes\n"), done.stderr

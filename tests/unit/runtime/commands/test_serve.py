"""``corral serve`` flags become RuntimeSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.cli import build_parser
from corral_runtime.commands.serve import run, settings_from_args

pytestmark = pytest.mark.unit


def test_flags_override_defaults(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--models",
            str(tmp_path),
            "--api-key",
            "k",
            "--parallel",
            "2",
            "--context-length",
            "8192",
            "--gpu-layers",
            "0",
        ]
    )
    assert args.func is run
    settings = settings_from_args(args)
    assert (settings.host, settings.port, settings.models) == ("0.0.0.0", 9000, tmp_path)
    assert settings.api_key == "k" and settings.parallel == 2
    assert settings.context_length == 8192 and settings.gpu_layers == 0


def test_no_flags_keeps_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_PORT", raising=False)
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.port == 11434 and settings.gpu_layers == "auto"


def test_batch_invariance_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_BATCH_INVARIANT", raising=False)
    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve"])).batch_invariant is True
    assert settings_from_args(parse(["serve", "--no-batch-invariant"])).batch_invariant is False
    monkeypatch.setenv("CORRAL_BATCH_INVARIANT", "false")
    assert settings_from_args(parse(["serve"])).batch_invariant is False
    assert settings_from_args(parse(["serve", "--batch-invariant"])).batch_invariant is True


def test_pull_policy_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALLOWED_HOSTS", "ALLOW_INSECURE", "ALLOW_LOCAL_PATHS"):
        monkeypatch.delenv(f"CORRAL_PULL_{name}", raising=False)
    parse = build_parser().parse_args
    closed = settings_from_args(parse(["serve"]))
    assert closed.pull_allowed_hosts == []
    assert not closed.pull_allow_insecure and not closed.pull_allow_local_paths
    opened = settings_from_args(
        parse(
            [
                "serve",
                "--pull-allowed-hosts",
                "registry.corp:5000, .corp.example",
                "--pull-allow-insecure",
                "--pull-allow-local-paths",
            ]
        )
    )
    assert opened.pull_allowed_hosts == ["registry.corp:5000", ".corp.example"]
    assert opened.pull_allow_insecure and opened.pull_allow_local_paths
    monkeypatch.setenv("CORRAL_PULL_ALLOWED_HOSTS", "10.0.0.0/8,.x.example")
    assert settings_from_args(parse(["serve"])).pull_allowed_hosts == ["10.0.0.0/8", ".x.example"]

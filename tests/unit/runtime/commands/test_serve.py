"""``corral serve`` flags become RuntimeSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.cli import build_parser
from corral_runtime.commands.serve import run, settings_from_args
from corral_runtime.settings import parse_bind_address

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
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.port == 11434 and settings.gpu_layers == "auto"


@pytest.mark.parametrize(
    ("setting", "flag"), [("batch_invariant", "batch-invariant"), ("warm_turns", "warm-turns")]
)
def test_a_switch_is_on_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, setting: str, flag: str
) -> None:
    variable = f"CORRAL_{setting.upper()}"
    monkeypatch.delenv(variable, raising=False)
    parse = build_parser().parse_args
    assert getattr(settings_from_args(parse(["serve"])), setting) is True
    assert getattr(settings_from_args(parse(["serve", f"--no-{flag}"])), setting) is False
    monkeypatch.setenv(variable, "false")
    assert getattr(settings_from_args(parse(["serve"])), setting) is False
    assert getattr(settings_from_args(parse(["serve", f"--{flag}"])), setting) is True


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


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("0.0.0.0", ("0.0.0.0", 11434)),
        (":8080", ("127.0.0.1", 8080)),
        ("example.test:9000", ("example.test", 9000)),
        ("http://0.0.0.0:7000", ("0.0.0.0", 7000)),
        ("http://example.test", ("example.test", 11434)),
        ("[::1]:6000", ("::1", 6000)),
        (" localhost ", ("localhost", 11434)),
    ],
)
def test_ollama_host_forms_bind_as_ollama_serve_does(value: str, address: tuple[str, int]) -> None:
    assert parse_bind_address(value) == address


@pytest.mark.parametrize("value", ["https://example.test", "host:http", "host:70000", "host:"])
def test_an_address_that_cannot_be_bound_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        parse_bind_address(value)


def test_ollama_host_binds_where_flags_and_corral_variables_are_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CORRAL_HOST", "CORRAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    parse = build_parser().parse_args
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:9100")
    settings = settings_from_args(parse(["serve"]))
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)
    settings = settings_from_args(parse(["serve", "--port", "9200"]))
    assert (settings.host, settings.port) == ("0.0.0.0", 9200)
    settings = settings_from_args(parse(["serve", "--host", "127.0.0.2"]))
    assert (settings.host, settings.port) == ("127.0.0.2", 9100)
    monkeypatch.setenv("CORRAL_HOST", "127.0.0.3")
    settings = settings_from_args(parse(["serve"]))
    assert (settings.host, settings.port) == ("127.0.0.3", 9100)
    monkeypatch.setenv("CORRAL_PORT", "9300")
    assert settings_from_args(parse(["serve"])).port == 9300
    monkeypatch.setenv("OLLAMA_HOST", " ")
    monkeypatch.delenv("CORRAL_HOST")
    assert settings_from_args(parse(["serve"])).host == "127.0.0.1"


def test_a_bad_ollama_host_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "example.test:port")
    with pytest.raises(SystemExit) as exited:
        settings_from_args(build_parser().parse_args(["serve"]))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "ollama-host: invalid address 'example.test:port'" in error


def test_a_bad_ollama_host_is_ignored_where_flags_say_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A runtime pod passes --host and --port: an OLLAMA_HOST inherited from elsewhere is moot.
    monkeypatch.setenv("OLLAMA_HOST", "example.test:port")
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8000"])
    settings = settings_from_args(args)
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)

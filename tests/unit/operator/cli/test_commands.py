"""The cluster subcommands inside ``corral``: registered next to the runtime's, and failing with
one line and exit code 1 when there is no cluster to talk to."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from corral_runtime import cli

pytestmark = pytest.mark.unit


def subcommands() -> set[str]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices or ())


def test_cluster_commands_sit_beside_the_store_commands() -> None:
    names = subcommands()
    assert {"deploy", "run", "ps", "models"} <= names
    assert {"serve", "pull", "list", "rm", "cp", "show"} <= names


def provider(name: str, module: str, group: str = cli.COMMANDS_GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=module, group=group)


def test_both_packages_register_through_the_entry_point_group() -> None:
    # Nothing in the runtime names the operator: the cluster commands come from the operator's
    # own distribution metadata, after the runtime's.
    providers = [(p.dist.name if p.dist else "", p.value) for p in cli.command_providers()]
    assert providers[:3] == [
        ("corral-runtime", "corral_runtime.commands.create"),
        ("corral-runtime", "corral_runtime.commands.serve"),
        ("corral-runtime", "corral_runtime.commands.models"),
    ]
    assert ("corral-operator", "corral_operator.cli") in providers[3:]


def test_help_groups_local_server_and_cluster_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    local, server, cluster = (text.index(title) for title in cli.GROUP_TITLES.values())
    assert local < server < cluster and cli.OTHER_TITLE not in text
    assert "usage: corral [-h] [--version] COMMAND ..." in text

    def group_of(command: str) -> int:
        at = text.index(f"\n  {command} ")
        return max(start for start in (local, server, cluster) if start < at)

    for command in ("serve", "create", "show", "pull", "list, ls", "cp", "rm"):
        assert group_of(command) == local, command
    for command in ("run", "stop", "ps"):
        assert group_of(command) == server, command
    for command in ("deploy", "models"):
        assert group_of(command) == cluster, command


def test_command_sections_order_and_align() -> None:
    sections = cli.command_sections(
        [
            cli.CommandHelp("rm", (), "Remove", "local"),
            cli.CommandHelp("zap", (), "Made up", "nowhere"),
            cli.CommandHelp("list", ("ls",), "List", "local"),
            cli.CommandHelp("serve", (), "Serve", "local"),
            cli.CommandHelp("ps", (), "Running", "server"),
        ]
    )
    assert sections == (
        f"{cli.GROUP_TITLES['local']}\n  serve     Serve\n  list, ls  List\n  rm        Remove\n\n"
        f"{cli.GROUP_TITLES['server']}\n  ps        Running\n\n"
        f"{cli.OTHER_TITLE}\n  zap       Made up"
    )


def test_an_error_of_the_machine_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command that meets a refusal of the machine (a store it may not write): no traceback.
    (tmp_path / "corral_refused_commands.py").write_text(
        "def register(subparsers):\n"
        "    def refused(args):\n"
        "        raise PermissionError(13, 'Permission denied', '/srv/models/blobs')\n"
        "    subparsers.add_parser('refused').set_defaults(func=refused)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    refused = provider("refused", "corral_refused_commands")
    monkeypatch.setattr(cli, "command_providers", lambda: [refused])
    assert cli.main(["refused"]) == 1
    err = capsys.readouterr().err
    assert err == "Error: [Errno 13] Permission denied: '/srv/models/blobs'\n"


def test_without_the_operator_only_the_local_commands_exist() -> None:
    # What the runtime image has: the runtime's own providers only.
    local = [p for p in cli.command_providers() if p.value.startswith("corral_runtime.")]
    parser = cli.build_parser(local)
    action = next(a for a in parser._actions if a.dest == "command")
    names = set(action.choices or ())
    assert "serve" in names and "pull" in names
    assert not names & {"deploy", "ps", "models"}


def test_a_broken_import_inside_a_present_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "corral_broken_commands.py").write_text("import corral_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="corral_no_such_dependency"):
        cli.build_parser([provider("broken", "corral_broken_commands")])


@pytest.fixture
def no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name in ("CORRAL_HOST", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [["models"], ["deploy", "gemma3:270m"]])
def test_no_kubeconfig_is_one_line_and_exit_1(
    argv: list[str], no_kubeconfig: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "Error: no cluster configured: no kubeconfig found "
        "(pass --kubeconfig, set KUBECONFIG, or create ~/.kube/config)\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "Error: kubeconfig {path} does not exist\n"),
        ("clusters: [", "Error: cannot load the kubeconfig: "),
        ("apiVersion: v1\n", "Error: cannot load the kubeconfig: Invalid kube-config file."),
    ],
)
def test_unusable_kubeconfig(
    content: str | None,
    message: str,
    tmp_path: Path,
    no_kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    assert cli.main(["models", "--kubeconfig", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message.format(path=path))
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deploy", "m:1", "--keep-alive", "soon"], "Error: invalid duration 'soon'"),
        (["deploy", "m:1", "--min", "3", "--max", "2"], "Error: --min (3) is greater than"),
        (["deploy", "ftp://x/y.gguf"], "Error: unsupported source scheme 'ftp'"),
        (["run", "m:1", "hi", "--host", "ftp://x"], "Error: invalid host 'ftp://x'"),
    ],
)
def test_bad_arguments_are_refused_before_any_cluster_call(
    argv: list[str], message: str, no_kubeconfig: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [["ps"], ["stop", "gemma3:270m"]])
def test_ps_and_stop_with_no_server_and_no_cluster_say_how_to_start_one(
    argv: list[str],
    no_kubeconfig: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from corral_operator.cli import gateway
    from devstack.controlplane import free_port

    # Nothing listens at Ollama's default address, whatever else runs on this machine.
    monkeypatch.setattr(gateway, "LOCAL_SERVER", f"http://127.0.0.1:{free_port()}")
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"Error: {gateway.NO_SERVER}\n")


@pytest.mark.parametrize(
    "argv", [["ps", "--host", "ftp://x"], ["stop", "m:1", "--host", "ftp://x"]]
)
def test_ps_and_stop_refuse_a_host_that_is_not_one(
    argv: list[str], no_kubeconfig: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith("Error: invalid host 'ftp://x'")


def test_stop_takes_one_model() -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["stop"])
    assert exited.value.code == 2
    assert "stop" in subcommands()


@pytest.mark.parametrize(
    ("modelfile", "message"),
    [
        (None, "Error: {path}: No such file or directory"),
        ("FROM gemma3:270m\nADAPTER ./lora.gguf\n", "Error: {path}: line 2: adapters are"),
        ("FROM gemma3:270m\nPARAMETER top_k many\n", "Error: {path}: line 2:"),
        ("FROM ./tiny.gguf\n", "Error: FROM ./tiny.gguf is a file on this machine"),
        ("SYSTEM hi\n", "Error: {path}:"),
    ],
)
def test_deploy_from_a_modelfile_refuses_what_the_cluster_cannot_pull_before_any_call(
    modelfile: str | None,
    message: str,
    tmp_path: Path,
    no_kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "Modelfile"
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    if modelfile is not None:
        path.write_text(modelfile)
    assert cli.main(["deploy", "pirate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message.format(path=path)), err
    assert err.count("\n") == 1


def test_deploy_reads_a_good_modelfile_then_needs_a_cluster(
    tmp_path: Path, no_kubeconfig: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("FROM gemma3:270m\nMESSAGE user hi\nPARAMETER mirostat 1\n")
    assert cli.main(["deploy", "pirate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    # The deprecated parameter is skipped with a warning, as Ollama does; then the cluster.
    assert "warning:" in err and "mirostat" in err
    assert err.splitlines()[-1].startswith("Error: no cluster configured")

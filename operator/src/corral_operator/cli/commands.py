"""The cluster subcommands of ``corral``: deploy, run, ps, stop, models.

``corral list`` (and ``pull``/``rm``/``cp``/``show``) manage the local model store; these talk to
a Kubernetes cluster with corral installed. Each handler returns an exit code and turns every
expected failure into one ``Error: …`` line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from corral_operator.cli.cluster import Cluster, CommandError
from corral_operator.settings import CliSettings, KubeClientSettings

if TYPE_CHECKING:
    import httpx

    from corral_runtime.store.modelfile import Modelfile

Handler = Callable[[argparse.Namespace], int]


def _cluster_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("cluster")
    group.add_argument(
        "--kubeconfig", help="kubeconfig file (default: KUBECONFIG, then ~/.kube/config)"
    )
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument(
        "-n",
        "--namespace",
        help="namespace of the Models and ModelServers (default: the context's, else default)",
    )
    return common


def _server_options(settings: CliSettings) -> argparse.ArgumentParser:
    """``--host`` and ``--api-key`` of the commands that talk to one server (ps, stop)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("server")
    group.add_argument(
        "--host", help="server URL (default: CORRAL_HOST, OLLAMA_HOST, 127.0.0.1:11434, cluster)"
    )
    group.add_argument(
        "--api-key",
        default=settings.api_key,
        help="bearer key for a server with API keys (default: CORRAL_API_KEY)",
    )
    return options


def _reported(func: Handler) -> Handler:
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1

    return run


@contextmanager
def _connected(args: argparse.Namespace) -> Iterator[Cluster]:
    cluster = Cluster.connect(KubeClientSettings(), args.kubeconfig, args.context, args.namespace)
    try:
        yield cluster
    finally:
        cluster.close()


# Where `corral --help` lists them (corral_runtime.cli): run, ps and stop talk to whichever
# server choose_server finds, deploy and models only to a cluster.
HELP_GROUPS = {
    "run": "server",
    "ps": "server",
    "stop": "server",
    "deploy": "cluster",
    "models": "cluster",
}


def register(subparsers: Any) -> None:
    common = _cluster_options()
    # Read once, as the parser is built: the environment gives defaults and run's host.
    settings = CliSettings()

    deploy = subparsers.add_parser(
        "deploy",
        parents=[common],
        help="Deploy a model to the cluster (a Model and a ModelServer)",
        description="Create or update the Model and ModelServer for MODEL with server-side "
        "apply (field manager corral-cli); both are named after the model "
        "(gemma3:270m -> gemma3-270m). With -f, MODEL is the name to serve the Modelfile's "
        "model under, as in ollama create NAME -f Modelfile.",
    )
    deploy.add_argument(
        "model",
        metavar="MODEL",
        help="e.g. gemma3:270m, hf://org/repo/f.gguf; with -f: the name, e.g. pirate",
    )
    deploy.add_argument(
        "-f",
        "--file",
        metavar="MODELFILE",
        help="an Ollama Modelfile (FROM a library name, hf://, https:// or pvc://)",
    )
    deploy.add_argument(
        "--gpus",
        type=int,
        help="GPUs per replica (default: sized from the model where nodes label their GPU "
        "memory, else none)",
    )
    deploy.add_argument(
        "--min", dest="min_replicas", type=int, default=0, help="replicas kept up (default 0)"
    )
    deploy.add_argument(
        "--max", dest="max_replicas", type=int, default=1, help="most replicas (default 1)"
    )
    deploy.add_argument(
        "--keep-alive",
        default="5m",
        help="idle time before scaling to --min: 300, 300s, 5m, 1h (default 5m)",
    )
    deploy.add_argument(
        "--max-keep-alive",
        default="1h",
        help=(
            "how long after its last request a request's keep_alive may keep the server up "
            "(e.g. 30m; -1: no bound; default 1h)"
        ),
    )
    deploy.add_argument("--cpu", help="CPU request per replica (e.g. 2 or 500m)")
    deploy.add_argument("--memory", help="memory request and limit per replica (e.g. 8Gi)")
    deploy.set_defaults(func=_reported(cmd_deploy))

    run = subparsers.add_parser(
        "run",
        parents=[common],
        help="Chat with a model (pulled first on a local server)",
        description="Chat with MODEL on a server: --host, CORRAL_HOST or OLLAMA_HOST; else the "
        "cluster's gateway when a cluster flag is given; else a server at 127.0.0.1:11434 "
        "(`corral serve`, Ollama), which pulls MODEL if it lacks it; else the gateway of the "
        "kubeconfig's cluster. Without PROMPT at a terminal: Ollama's interactive session "
        "(/? for help, /bye or Ctrl-D to leave). With PROMPT, or input piped in: one reply.",
    )
    run.add_argument("model", metavar="MODEL", help="the served name, e.g. gemma3:270m")
    run.add_argument("prompt", metavar="PROMPT", nargs="*", help="one prompt, then exit")
    run.add_argument(
        "--host",
        help="server URL (default: CORRAL_HOST, OLLAMA_HOST, 127.0.0.1:11434, the cluster's "
        "gateway)",
    )
    run.add_argument(
        "--gateway-namespace",
        help="where corral is installed (default: CORRAL_GATEWAY_NAMESPACE or corral-system)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="let the server pull a missing MODEL from a registry over plain HTTP",
    )
    run.add_argument("--system", help="a system message for the conversation")
    run.add_argument("--keep-alive", help="keep_alive sent with each request (e.g. 10m)")
    run.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option for each request, repeatable (e.g. -o temperature=0 "
        "-o num_predict=64)",
    )
    run.add_argument(
        "--api-key",
        default=settings.api_key,
        help="bearer key for a gateway with API keys (default: CORRAL_API_KEY)",
    )
    run.set_defaults(func=_reported(functools.partial(cmd_run, settings=settings)))

    server = _server_options(settings)
    ps = subparsers.add_parser(
        "ps",
        parents=[common, server],
        help="List running models (on the cluster: its ModelServers)",
        description="Against one server (--host, CORRAL_HOST, OLLAMA_HOST, else a server at "
        "127.0.0.1:11434): its loaded models, as `ollama ps` lists them. Against the cluster "
        "(a cluster flag, else a kubeconfig): its ModelServers, their replicas and what their "
        "pods have loaded.",
    )
    ps.set_defaults(func=_reported(functools.partial(cmd_ps, settings=settings)))

    stop = subparsers.add_parser(
        "stop",
        parents=[common, server],
        help="Stop a running model (unload it)",
        description="Unload MODEL from the server chosen as for `corral run`. MODEL is the "
        "served name (gemma3:270m), not a ModelServer's name. Through the cluster's gateway a "
        "server at zero replicas is not woken for it, and a running one scales down to its "
        "minReplicas once nothing else keeps it up.",
    )
    stop.add_argument("model", metavar="MODEL", help="the served name, e.g. gemma3:270m")
    stop.add_argument(
        "--gateway-namespace",
        help="where corral is installed (default: CORRAL_GATEWAY_NAMESPACE or corral-system)",
    )
    stop.set_defaults(func=_reported(functools.partial(cmd_stop, settings=settings)))

    models = subparsers.add_parser(
        "models",
        parents=[common],
        help="List the cluster's Models",
    )
    models.set_defaults(func=_reported(cmd_models))


def cmd_deploy(args: argparse.Namespace) -> int:
    from corral_operator.cli.objects import DeployRequest, model_object, server_object
    from corral_operator.cli.values import format_duration, parse_duration
    from corral_operator.sources import InvalidSourceError

    try:
        modelfile, is_local = read_modelfile(args.file) if args.file else (None, False)
        request = DeployRequest(
            model=args.model,
            gpus=args.gpus,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            keep_alive_seconds=parse_duration(args.keep_alive),
            max_keep_alive_seconds=parse_duration(args.max_keep_alive, forever=True),
            cpu=args.cpu,
            memory=args.memory,
            modelfile=modelfile,
            modelfile_is_local=is_local,
        )
        problems = request.problems()
        if problems:
            raise CommandError("; ".join(problems))
        model_object(request, "")  # refuses a bad MODEL before any call to the cluster
    except (InvalidSourceError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    with _connected(args) as cluster:
        model = cluster.apply(model_object(request, cluster.namespace))
        server = cluster.apply(server_object(request, cluster.namespace))
    spec = server.obj["spec"]
    print(
        f"model.corral.dev/{model.obj['metadata']['name']} {model.action} "
        f"(source {model.obj['spec']['source']})"
    )
    print(
        f"modelserver.corral.dev/{server.obj['metadata']['name']} {server.action} "
        f"(replicas {spec['minReplicas']}-{spec['maxReplicas']}, "
        f"keep-alive {format_duration(spec['keepAliveSeconds'])}, "
        f"gpus {spec['resources'].get('gpus', 'sized from the model')})"
    )
    from corral_operator.cli.naming import client_model_name

    print(f"Chat with it: corral run {client_model_name(args.model)}")
    return 0


def read_modelfile(path: str) -> tuple[Modelfile, bool]:
    """The Modelfile at ``path`` and whether its FROM is a file on this machine (relative to
    the Modelfile, as Ollama reads it). CommandError naming the file for what cannot be read;
    the parser's warnings (parameters Ollama no longer uses) go to stderr."""
    from pathlib import Path

    from corral_runtime.store.modelfile import (
        MAX_MODELFILE_BYTES,
        ModelfileError,
        base_path,
        decode_modelfile,
        parse_modelfile,
    )

    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            # One byte past the cap is enough for the parser to refuse a file too large.
            raw = handle.read(MAX_MODELFILE_BYTES + 1)
        modelfile = parse_modelfile(decode_modelfile(raw))
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None
    except ModelfileError as exc:
        raise CommandError(f"{path}: {exc}") from None
    for warning in modelfile.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return modelfile, base_path(modelfile.base, file.parent).exists()


def cmd_run(args: argparse.Namespace, settings: CliSettings) -> int:
    import httpx

    from corral_operator.cli import chat, gateway, repl
    from corral_operator.cli.values import parse_option

    try:
        options = dict(parse_option(text) for text in args.option)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    choice, host = _server(args, settings, gateway.find_server)
    prompt = " ".join(args.prompt)
    interactive = not prompt and sys.stdin.isatty()
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        prompt = "\n\n".join(part for part in (piped, prompt) if part)
        if not prompt:
            raise CommandError("no prompt: pass PROMPT or pipe text in")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=host, timeout=chat.TIMEOUT, headers=headers) as http:
        conversation = chat.Conversation(
            http, args.model, system=args.system, keep_alive=args.keep_alive, options=options
        )
        chat.ensure_model(
            conversation,
            repl.pull_progress(sys.stderr),
            gateway=choice.gateway,
            insecure=args.insecure,
        )
        if interactive:
            repl.interact(conversation, sys.stdout, sys.stderr)
        else:
            chat.say(conversation, prompt, sys.stdout)
    return 0


_T = TypeVar("_T")


def _server(args: argparse.Namespace, settings: CliSettings, find: Callable[..., _T]) -> _T:
    """Where a command talks (``gateway.server_choice``, or ``find_server`` with its URL), from
    its flags; a ``--host`` or OLLAMA_HOST that is no address is a command error."""
    try:
        return find(
            args.host,
            settings,
            kubeconfig=args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            gateway_namespace=getattr(args, "gateway_namespace", None),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _server_client(url: str, api_key: str | None) -> httpx.Client:
    """A client of one server, with the bearer key when one is given."""
    import httpx

    from corral_operator.cli.local import TIMEOUT

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers)


def cmd_stop(args: argparse.Namespace, settings: CliSettings) -> int:
    from corral_operator.cli import gateway, local

    _, url = _server(args, settings, gateway.find_server)
    with _server_client(url, args.api_key) as http:
        local.stop_model(http, args.model)
    return 0


def cmd_ps(args: argparse.Namespace, settings: CliSettings) -> int:
    from corral_operator import api
    from corral_operator.cli import gateway, local, tables
    from corral_operator.cli.pods import loaded_models

    choice = _server(args, settings, gateway.server_choice)
    if choice.url is not None:
        with _server_client(choice.url, args.api_key) as http:
            running = local.running_models(http)
        print(tables.running_table(running, datetime.now(UTC)))
        return 0
    with _connected(args) as cluster:
        servers = cluster.list_corral(api.MODELSERVERS)
        loaded = {
            s["metadata"]["name"]: loaded_models(cluster, s)
            for s in servers
            if int((s.get("status") or {}).get("readyReplicas") or 0) > 0
        }
    print(tables.ps_table(servers, datetime.now(UTC), loaded))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from corral_operator import api
    from corral_operator.cli import tables

    with _connected(args) as cluster:
        models = cluster.list_corral(api.MODELS)
    print(tables.models_table(models))
    return 0

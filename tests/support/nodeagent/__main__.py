"""Command line: ``python -m tests.support.nodeagent --kubeconfig FILE --node NAME [...]``.

Prints ``node agent ready`` (with each node's address) once every Node is registered, runs until
SIGTERM/SIGINT, then stops every pod, deletes its Nodes and removes its network namespaces.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .agent import NodeAgent, Provisioner
from .imagemap import load_image_map
from .kube import api_client
from .network import Agent, cleanup_stale
from .nodeobj import GPU_RESOURCE, NodeShape


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.nodeagent",
        description="Play the kubelet for local processes.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--node", action="append", required=True, help="a Node to register (repeat for several)"
    )
    parser.add_argument(
        "--image-map",
        type=Path,
        required=True,
        help="YAML/JSON file mapping images to local commands",
    )
    parser.add_argument("--gpus", type=int, default=0, help="fake nvidia.com/gpu per node")
    parser.add_argument("--gpu-resource", default=GPU_RESOURCE)
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="16Gi")
    parser.add_argument("--pods", type=int, default=60, help="pods per node (at most 63)")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE node label")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".nodeagent"), help="pod logs and volumes"
    )
    parser.add_argument(
        "--volume-root",
        type=Path,
        default=None,
        help="where provisioned claims live (default STATE_DIR/volumes)",
    )
    parser.add_argument(
        "--no-provisioner", action="store_true", help="do not bind PersistentVolumeClaims"
    )
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=10.0,
        help="first crash back-off in seconds (doubles up to 300)",
    )
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between beats")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="longest SIGTERM grace for pods when the agent stops",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not 1 <= args.pods <= 63:
        parser.error("--pods must be between 1 and 63 (one /30 per pod in a /24)")
    for label in args.label:
        if "=" not in label:
            parser.error(f"--label {label!r}: expected KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    image_map = load_image_map(args.image_map)
    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    removed = cleanup_stale()
    if removed:
        logging.info("removed %d stale namespaces: %s", len(removed), ", ".join(removed))
    # `kill -USR1 <pid>` prints every thread's stack: the way to see what a stuck agent does.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    api = api_client(args.kubeconfig)
    agent = Agent()
    labels = dict(label.split("=", 1) for label in args.label)
    nodes: list[NodeAgent] = []
    provisioner: Provisioner | None = None
    try:
        for index, name in enumerate(args.node):
            shape = NodeShape(
                name=name,
                address="",
                pod_cidr="",
                cpu=args.cpu,
                memory=args.memory,
                pods=args.pods,
                gpus=args.gpus,
                gpu_resource=args.gpu_resource,
            )
            node = NodeAgent(
                api,
                shape,
                agent,
                index,
                image_map,
                state_dir,
                args.restart_backoff,
                labels,
                args.heartbeat,
            )
            nodes.append(node)
            node.start()
        if not args.no_provisioner:
            provisioner = Provisioner(api, (args.volume_root or state_dir / "volumes").resolve())
            provisioner.start()
        described = ", ".join(
            f"{n.name}={n.network.host_ip} pods {n.network.subnet}" for n in nodes
        )
        print(
            f"node agent ready: agent {agent.aid}; {described}; logs under {state_dir / 'pods'}",
            flush=True,
        )
        stop.wait()
    finally:
        try:
            if provisioner is not None:
                provisioner.stop()
            for node in nodes:
                node.stop(args.shutdown_grace)
        finally:
            agent.close()  # whatever failed above, no namespace or process outlives the agent
            api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""devstack.node's pure decisions: containerd's and CNI's configuration, the kubelet's and
kube-proxy's flags, which iptables rules and chains stop removes, and the pause image archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from devstack import node
from devstack.node import (
    BRIDGE,
    CNI_BIN,
    NODE_IP,
    PAUSE_IMAGE,
    POD_SUBNET,
    Node,
    chains,
    chains_to_remove,
    cni_config,
    containerd_config,
    debug_logs,
    kube_proxy_args,
    kubelet_args,
    masquerade_rules,
    pause_archive,
)

pytestmark = pytest.mark.unit

CRI = "io.containerd.grpc.v1.cri"


def _flags(argv: list[str]) -> dict[str, str]:
    """``--name=value`` flags by name (the program itself left out)."""
    flags = {}
    for arg in argv[1:]:
        assert arg.startswith("--") and "=" in arg, arg
        name, value = arg[2:].split("=", 1)
        assert name not in flags, f"--{name} given twice"
        flags[name] = value
    return flags


# -- containerd and CNI ----------------------------------------------------------------------


def test_containerd_config_is_toml_with_everything_under_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "node state"  # a space must not break the TOML strings
    config = tomllib.loads(containerd_config(state))
    assert config["version"] == 2
    assert config["root"] == str(state / "containerd" / "root")
    assert config["state"] == str(state / "containerd" / "state")
    # The socket the kubelet and ctr are pointed at.
    assert config["grpc"]["address"] == str(Node(state).socket)
    assert config["ttrpc"]["address"].startswith(str(state / "containerd") + "/")
    cri = config["plugins"][CRI]
    assert cri["sandbox_image"] == PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {"bin_dir": str(CNI_BIN), "conf_dir": str(state / "cni" / "net.d")}
    assert cri["containerd"]["default_runtime_name"] == "runc"
    assert cri["containerd"]["runtimes"]["runc"]["runtime_type"] == "io.containerd.runc.v2"
    assert config["debug"]["level"] == "info"


def test_a_debug_node_logs_each_step_of_a_pods_start(tmp_path: Path) -> None:
    # containerd at debug level (its CNI setup), the kubelet at -v=4 (its sync loop and volume
    # wait), for devstack.podstart; the usual node logs less.
    assert not debug_logs({}) and not debug_logs({node.DEBUG_LOGS_ENV: "0"})
    assert debug_logs({node.DEBUG_LOGS_ENV: "1"})
    assert tomllib.loads(containerd_config(tmp_path, debug=True))["debug"]["level"] == "debug"
    argv = kubelet_args(tmp_path, tmp_path / "kubeconfig", 10248, tmp_path / "ca.crt")
    assert _flags(argv)["v"] == "1"
    argv = kubelet_args(tmp_path, tmp_path / "kubeconfig", 10248, tmp_path / "ca.crt", 4)
    assert _flags(argv)["v"] == "4"


def test_cni_config_is_a_bridge_on_the_pod_subnet(tmp_path: Path) -> None:
    config = cni_config(tmp_path)
    json.dumps(config)  # written as a .conflist
    bridge, portmap = config["plugins"]
    assert (bridge["type"], bridge["bridge"]) == ("bridge", BRIDGE)
    assert bridge["isGateway"] and bridge["hairpinMode"]
    # Masquerading is the node's one rule for the subnet, not a chain per pod in each CNI ADD.
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["ranges"] == [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]]
    assert ipam["dataDir"] == str(tmp_path / "cni" / "ipam")
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    # The node's address is the bridge's, the first of the pods' subnet.
    subnet = ipaddress.ip_network(POD_SUBNET)
    assert ipaddress.ip_address(NODE_IP) == next(subnet.hosts())


# -- the kubelet and kube-proxy --------------------------------------------------------------


def test_kubelet_args(tmp_path: Path) -> None:
    node = Node(tmp_path / ".node")
    kubeconfig = tmp_path / "kubeconfig"
    argv = kubelet_args(node.state_dir, kubeconfig, 10248, tmp_path / "ca.crt")
    assert Path(argv[0]).name == "kubelet"
    flags = _flags(argv)
    assert flags["kubeconfig"] == str(kubeconfig)
    assert flags["node-ip"] == NODE_IP
    assert flags["address"] == NODE_IP
    assert (flags["healthz-bind-address"], flags["healthz-port"]) == ("127.0.0.1", "10248")
    assert flags["read-only-port"] == "0"
    assert flags["container-runtime"] == "remote"
    assert flags["container-runtime-endpoint"] == f"unix://{node.socket}"
    # The sandbox image the kubelet names is the one containerd runs and the node imports.
    assert flags["pod-infra-container-image"] == PAUSE_IMAGE
    cri = tomllib.loads(containerd_config(node.state_dir))["plugins"][CRI]
    assert flags["cni-conf-dir"] == cri["cni"]["conf_dir"]
    assert flags["cni-bin-dir"] == cri["cni"]["bin_dir"]
    # Image garbage collection off: no registry could give a built image back.
    assert flags["image-gc-high-threshold"] == "100"
    assert int(flags["image-gc-low-threshold"]) < 100
    assert flags["root-dir"] == str(node.state_dir / "kubelet")
    assert Path(flags["cert-dir"]).is_relative_to(node.state_dir)
    assert flags["make-iptables-util-chains"] == "false"
    # Its API serves no anonymous client: certificates of the cluster's CA or tokens the API
    # server vouches for, each request authorized by the API server.
    assert flags["anonymous-auth"] == "false"
    assert flags["client-ca-file"] == str(tmp_path / "ca.crt")
    assert flags["authorization-mode"] == "Webhook"
    assert flags["authentication-token-webhook"] == "true"


def test_kube_proxy_args(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    argv = kube_proxy_args(kubeconfig, 10256, 10249)
    assert Path(argv[0]).name == "kube-proxy"
    flags = _flags(argv)
    assert flags["kubeconfig"] == str(kubeconfig)
    assert flags["proxy-mode"] == "iptables"
    assert flags["hostname-override"] == "corral-node"
    assert ipaddress.IPv4Network(POD_SUBNET).subnet_of(ipaddress.IPv4Network(flags["cluster-cidr"]))
    # The machine's conntrack table size and timeouts are left as they are (0: leave as-is).
    assert flags["conntrack-max-per-core"] == "0"
    assert flags["conntrack-tcp-timeout-established"] == "0"
    assert flags["conntrack-tcp-timeout-close-wait"] == "0"
    assert flags["healthz-bind-address"] == "127.0.0.1:10256"
    assert flags["metrics-bind-address"] == "127.0.0.1:10249"


# -- iptables --------------------------------------------------------------------------------

# `iptables-save -t nat` of a machine that had a DOCKER chain, a KUBE-MARK-DROP chain and their
# rules before the node started (another tool's), then the node's kube-proxy and CNI plugins.
NAT = (Path(__file__).parent / "nat.iptables-save").read_text()
BEFORE = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "DOCKER", "KUBE-MARK-DROP"]


def test_chains_of_iptables_save() -> None:
    found = chains(NAT)
    assert found[:5] == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "DOCKER"]
    assert len(found) == 13


def test_chains_to_remove_keeps_what_was_there_before() -> None:
    rules, new = chains_to_remove(NAT, BEFORE)
    # The node's chains, in the order iptables-save lists them; the machine's own stay.
    assert new == [
        "CNI-12de61c45f1b14f2a650d487",
        "KUBE-MARK-MASQ",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-SEP-FBKKT7LNCSINTBWX",
        "KUBE-SERVICES",
        "KUBE-SVC-NPX46M4PTMTKRN6Y",
    ]
    # Only rules of kept chains that jump to a removed chain, as `iptables -D` arguments
    # (quoted comments unquoted); rules inside removed chains go with their chain's flush.
    assert rules == [
        ["PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j",
         "KUBE-SERVICES"],
        ["OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j",
         "KUBE-SERVICES"],
        ["POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules", "-j",
         "KUBE-POSTROUTING"],
        ["POSTROUTING", "-s", "10.244.0.2/32", "-m", "comment", "--comment",
         'name: "corral-devstack" id: '
         '"9aac862f48159bc0be2bbec2de2a533d8979f6ba17d9745b74ffbfb0502a9d49"',
         "-j", "CNI-12de61c45f1b14f2a650d487"],
        # A kept KUBE- chain that jumps to a new one: its rule goes, the chain stays.
        ["KUBE-MARK-DROP", "-j", "KUBE-MARK-MASQ"],
    ]  # fmt: skip


def test_masquerade_rules_are_the_bridge_plugins_for_the_subnet_and_go_at_stop() -> None:
    create, accept, masquerade, jump = masquerade_rules()
    chain = node.MASQUERADE_CHAIN
    assert create == ["-t", "nat", "-N", chain]
    # As the plugin's per-pod chain: the pods' own network as it is, all else but multicast
    # masqueraded; taken by everything the pods' subnet sends.
    assert accept == ["-t", "nat", "-A", chain, "-d", POD_SUBNET, "-j", "ACCEPT"]
    assert masquerade == ["-t", "nat", "-A", chain, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"]
    assert jump == ["-t", "nat", "-A", "POSTROUTING", "-s", POD_SUBNET, "-j", chain]
    # What stop removes: the chain, and the very rule that jumps to it.
    saved = "\n".join(
        [
            "*nat",
            ":POSTROUTING ACCEPT [0:0]",
            f":{chain} - [0:0]",
            " ".join(jump[2:]),
            " ".join(accept[2:]),
            " ".join(masquerade[2:]),
            "COMMIT",
        ]
    )
    assert chains_to_remove(saved, ["POSTROUTING"]) == ([jump[3:]], [chain])


def test_chains_to_remove_when_everything_existed_before() -> None:
    assert chains_to_remove(NAT, chains(NAT)) == ([], [])


def test_chains_to_remove_only_takes_the_prefixes() -> None:
    rules, new = chains_to_remove(NAT, [], prefixes=("CNI-",))
    assert new == ["CNI-12de61c45f1b14f2a650d487"]
    assert [rule[-1] for rule in rules] == ["CNI-12de61c45f1b14f2a650d487"]


# -- the pause image -------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _archive_files(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        files = {}
        for member in tar.getmembers():
            assert member.isfile(), member.name
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name] = extracted.read()
    return files


def _blob(files: dict[str, bytes], descriptor: dict[str, Any]) -> bytes:
    algorithm, digest = descriptor["digest"].split(":")
    data = files[f"blobs/{algorithm}/{digest}"]
    assert _sha256(data) == descriptor["digest"]
    assert len(data) == descriptor["size"]
    return data


@pytest.fixture
def fake_pause(tmp_path: Path) -> Path:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF\x02\x01\x01 not really pause \x00\xff" * 10)
    return binary


def test_pause_archive_is_a_valid_oci_archive(tmp_path: Path, fake_pause: Path) -> None:
    out = pause_archive(fake_pause, tmp_path / "pause.tar")
    assert out == tmp_path / "pause.tar"
    files = _archive_files(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"]["io.containerd.image.name"] == PAUSE_IMAGE
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == PAUSE_IMAGE.split(":")[-1]

    manifest = json.loads(_blob(files, entry))
    assert manifest["mediaType"] == entry["mediaType"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(_blob(files, manifest["config"]))
    [layer_descriptor] = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    diff = gzip.decompress(_blob(files, layer_descriptor))
    # Every blob in the archive is one the manifest reaches: no stray files.
    assert len([name for name in files if name.startswith("blobs/")]) == 3

    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha256(diff)]}
    assert config["config"]["Entrypoint"] == ["/pause"]
    user, _, group = config["config"]["User"].partition(":")
    assert (user, group) == ("65535", "65535")  # non-root, as runAsNonRoot pods need

    with tarfile.open(fileobj=io.BytesIO(diff)) as layer:
        [member] = layer.getmembers()
        assert member.name == "pause"
        assert member.isfile()
        assert member.mode == 0o755
        extracted = layer.extractfile(member)
        assert extracted is not None
        assert extracted.read() == fake_pause.read_bytes()


def test_pause_archive_is_reproducible_and_named(tmp_path: Path, fake_pause: Path) -> None:
    first = pause_archive(fake_pause, tmp_path / "a.tar").read_bytes()
    assert pause_archive(fake_pause, tmp_path / "b.tar").read_bytes() == first
    named = _archive_files(pause_archive(fake_pause, tmp_path / "c.tar", "localhost/other:9.9"))
    [entry] = json.loads(named["index.json"])["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": "localhost/other:9.9",
        "org.opencontainers.image.ref.name": "9.9",
    }


def test_containerd_config_quotes_paths_toml_would_misread(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" dir' / "back\\bslash"
    config = tomllib.loads(node.containerd_config(odd))
    assert config["root"] == str(odd / "containerd" / "root")
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"]["conf_dir"] == str(odd / "cni" / "net.d")


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("localhost/corral-pause:3.2", "3.2"),
        ("localhost:5000/pause", "latest"),
        ("localhost:5000/pause:1", "1"),
        ("pause", "latest"),
    ],
)
def test_tag_of_an_image_name(name: str, tag: str) -> None:
    assert node._tag(name) == tag


def test_tasks_read_ctr_tasks_ls() -> None:
    listing = (
        "TASK                                                                PID      STATUS    \n"
        "4f8c0e5d2a1b9f7e6d5c4b3a29180706f5e4d3c2b1a09f8e7d6c5b4a39281706    2817     RUNNING   \n"
        "9a8b7c6d    0        STOPPED   \n"
    )
    assert node.tasks(listing) == {
        "4f8c0e5d2a1b9f7e6d5c4b3a29180706f5e4d3c2b1a09f8e7d6c5b4a39281706": node.Task(
            2817, "RUNNING"
        ),
        "9a8b7c6d": node.Task(0, "STOPPED"),
    }
    assert node.tasks("TASK PID STATUS\n") == {}

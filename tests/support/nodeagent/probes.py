"""Running one probe (httpGet, tcpSocket, exec) against a pod's own address or namespace."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

# Probes must reach the pod directly, never through a proxy from the environment.
_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
)


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container has no port named {port!r}")


def run_probe(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    exec_prefix: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
) -> bool:
    """True when the probe succeeds within its timeout."""
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            host = get.get("host") or pod_ip
            port = resolve_port(get["port"], container)
            path = get.get("path", "/")
            if not path.startswith("/"):
                path = "/" + path
            request = urllib.request.Request(f"{scheme}://{host}:{port}{path}")
            request.add_header("User-Agent", "kube-probe/1.20")
            for header in get.get("httpHeaders") or []:
                request.add_header(header["name"], header["value"])
            try:
                with _OPENER.open(request, timeout=timeout) as response:
                    return 200 <= int(response.status) < 400
            except urllib.error.HTTPError as error:
                return 200 <= error.code < 400
        if "tcpSocket" in probe:
            sock = probe["tcpSocket"]
            port = resolve_port(sock["port"], container)
            with socket.create_connection((sock.get("host") or pod_ip, port), timeout=timeout):
                return True
        if "exec" in probe:
            done = subprocess.run(
                [*exec_prefix, *probe["exec"]["command"]],
                env=dict(env),
                capture_output=True,
                timeout=timeout,
            )
            return done.returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return False

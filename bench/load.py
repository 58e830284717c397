"""A large model's load against the volume's sequential read rate.

Builds here a multi-GB GGUF with a real model's shapes and real bytes: the instruct test model
(Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) with its layers repeated until the file reaches
``--size-gb`` (each new ``blk.N`` is a full copy of the bytes of ``blk.N mod 24``, every tensor
written, no hole), its metadata as it is but ``qwen2.block_count``. llama.cpp loads it as a deep
Qwen2. The file goes into a store of its own (verified and probed once, as the pull Job would),
then, with the page cache dropped before each (``echo 3 > /proc/sys/vm/drop_caches`` as root,
else the file's own pages evicted):

- the volume's sequential read rate: the file read start to end in 8 MiB blocks;
- the runtime's load: a fresh ``corral serve`` of that store, one request, its ``load_duration``
  (llama.cpp maps the file with MAP_POPULATE on the CPU, so the load reads every byte), and of
  that the weights' read alone (the server logs it; the rest is the context's creation, its KV
  cache).

A volume's rate moves from run to run on a shared machine (a virtual disk's host cache warms,
neighbours read), so the file is read once cold before the rounds, each round reads, loads
and reads again (its reference: the rate of the two reads, ``bracketing_rate``), and each ratio
is the median of the rounds' own ratios (7 rounds by default: on the shared 2-core machine one
round's ratio moved from 0.2 to 0.9 with the neighbours' load, so a median of 3 still moved
with it; every round is printed and counted). Prints the rates and
``load_rate_vs_sequential_read_ratio=<x>`` (goal >= 0.8) and
``weights_read_rate_vs_sequential_read_ratio=<x>``, and deletes the file and the store. Needs
twice ``--size-gb`` of free disk. Without root (no ``drop_caches``) it says the reads may be warm.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

from corral_runtime.instructmodel import instruct_model_path  # noqa: E402
from corral_runtime.store.gguf import TensorInfo, read_gguf_header, tensor_nbytes  # noqa: E402
from corral_runtime.store.layout import ModelStore  # noqa: E402
from tests.support.serveproc import serving_process  # noqa: E402

MODEL = "deep-qwen:latest"
BLOCK_COUNT_KEY = "qwen2.block_count"
READ_BLOCK = 8 << 20
# The runtime's log line for the weights' read (corral_runtime.engine.llama).
WEIGHTS_LINE = re.compile(r"read the weights of \S+ in ([0-9.]+)s")
# GGUF value types and their sizes (strings and arrays are read by length).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _FIXED:
        f.seek(_FIXED[vtype], 1)
    elif vtype == _STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, 1)
    elif vtype == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _FIXED:
            f.seek(_FIXED[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise ValueError(f"GGUF value type {vtype}")


def metadata_span(f: BinaryIO) -> tuple[bytes, int]:
    """The file's header and metadata as bytes (up to its tensor table), and where in them the
    block count's u32 value lies."""
    f.seek(0)
    magic, _, _, kv_count = struct.unpack("<4sIQQ", f.read(24))
    assert magic == b"GGUF"
    where = -1
    for _ in range(kv_count):
        (length,) = struct.unpack("<Q", f.read(8))
        key = f.read(length).decode()
        (vtype,) = struct.unpack("<I", f.read(4))
        if key == BLOCK_COUNT_KEY:
            assert vtype == 4  # u32
            where = f.tell()
        _skip_value(f, vtype)
    end = f.tell()
    f.seek(0)
    return f.read(end), where


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def deepen(source: Path, target: Path, size: int) -> int:
    """Write ``target``: ``source`` with its layers repeated until it is about ``size`` bytes
    (see the module docstring); the number of layers."""
    with source.open("rb") as f:
        header = read_gguf_header(f, source.stat().st_size)
    layers = int(header.metadata[BLOCK_COUNT_KEY])
    blocks = [t for t in header.tensors if t.name.startswith("blk.")]
    others = [t for t in header.tensors if not t.name.startswith("blk.")]
    per_layer = sum(tensor_nbytes(t) for t in blocks) / layers
    depth = max(layers, int((size - sum(tensor_nbytes(t) for t in others)) / per_layer))
    by_layer: dict[int, list[TensorInfo]] = {}
    for tensor in blocks:
        by_layer.setdefault(int(tensor.name.split(".")[1]), []).append(tensor)
    # (new name, source tensor) in llama.cpp's order: embeddings, layers, the rest.
    plan = [(t.name, t) for t in others if t.name == "token_embd.weight"]
    for n in range(depth):
        for tensor in by_layer[n % layers]:
            rest = tensor.name.split(".", 2)[2]
            plan.append((f"blk.{n}.{rest}", tensor))
    plan += [(t.name, t) for t in others if t.name != "token_embd.weight"]
    with source.open("rb") as src, target.open("wb") as out:
        raw, where = metadata_span(src)
        meta = bytearray(raw)
        struct.pack_into("<Q", meta, 8, len(plan))  # tensor count
        struct.pack_into("<I", meta, where, depth)
        out.write(meta)
        offset = 0
        for name, tensor in plan:
            encoded = name.encode()
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            out.write(struct.pack("<I", len(tensor.dims)))
            out.write(b"".join(struct.pack("<Q", d) for d in tensor.dims))
            out.write(struct.pack("<IQ", tensor.ggml_type, offset))
            offset += _pad(tensor_nbytes(tensor), header.alignment)
        out.write(bytes(_pad(out.tell(), header.alignment) - out.tell()))
        for _, tensor in plan:
            src.seek(header.data_offset + tensor.offset)
            data = src.read(tensor_nbytes(tensor))
            out.write(data + bytes(_pad(len(data), header.alignment) - len(data)))
    return depth


def drop_page_cache(path: Path) -> bool:
    """Evict ``path``'s pages from the page cache: all caches where this runs as root (``echo 3
    > /proc/sys/vm/drop_caches``), else the file's own clean pages (``POSIX_FADV_DONTNEED``, which
    needs no privilege), so that ``make bench`` runs it as any user. Whether every cache was
    dropped (without, a page another process maps stays cached: the numbers may be warm)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return False


def sequential_read_rate(path: Path) -> float:
    """Bytes per second reading ``path`` start to end, from a cold page cache."""
    drop_page_cache(path)
    started = time.perf_counter()
    total = 0
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(READ_BLOCK)
        while count := f.readinto(buffer):
            total += count
    return total / (time.perf_counter() - started)


def weights_seconds(log_text: str) -> float:
    """The weights' read time the runtime logged (its last load)."""
    found = WEIGHTS_LINE.findall(log_text)
    if not found:
        raise RuntimeError("the server logged no weights' read time")
    return float(found[-1])


def load_seconds(store: ModelStore, log: Path, cold: bool) -> tuple[float, float]:
    """A fresh ``corral serve`` of ``store``: the ``load_duration`` of its first request, and of
    it the weights' read."""
    if cold:
        drop_page_cache(store.get(MODEL).model_path)
    with serving_process(store.root, "--parallel", "1", log=log, start_timeout=300) as server:
        answer = httpx.post(
            server.base_url + "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}},
            timeout=1200,
        )
        answer.raise_for_status()
        return int(answer.json()["load_duration"]) / 1e9, weights_seconds(server.log_tail(200))


def bracketing_rate(before: float, after: float) -> float:
    """The volume's rate around a load, from the reads just before and just after it: the
    same bytes read twice in the mean of the two times (a volume's rate moved from 1.0 to 3.5
    GB/s between neighbouring rounds on the shared machine, so one read beside the load was
    as likely to miss its conditions as to catch them)."""
    return 2 / (1 / before + 1 / after)


def paired_ratio(rates: list[float], references: list[float]) -> float:
    """The median of each round's rate over the same round's reference: a volume that speeds up
    or slows down between rounds moves both sides of a round alike."""
    return statistics.median(r / ref for r, ref in zip(rates, references, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.5, help="the GGUF's size (<= 3)")
    parser.add_argument("--rounds", type=int, default=7, help="cold reads and cold loads")
    parser.add_argument("--dir", type=Path, default=None, help="where to build (a volume)")
    args = parser.parse_args()
    size = int(args.size_gb * 1e9)
    with tempfile.TemporaryDirectory(prefix="corral-load-", dir=args.dir) as tmp:
        root = Path(tmp)
        if shutil.disk_usage(root).free < 2.2 * size:
            raise SystemExit(f"not enough free disk in {root} for two {args.size_gb} GB files")
        gguf = root / "deep-qwen.gguf"
        depth = deepen(instruct_model_path(), gguf, size)
        file_size = gguf.stat().st_size
        print(f"built {gguf.name}: {file_size / 1e9:.2f} GB, {depth} layers", flush=True)
        store = ModelStore(root / "models")
        store.create_model(MODEL, gguf, config={"model_family": "qwen2"})
        gguf.unlink()  # the store holds its own copy (or link)
        log = root / "serve.log"
        load_seconds(store, log, cold=False)  # the blob's one-time verification and probe
        blob = store.get(MODEL).model_path
        if not drop_page_cache(blob):
            print("not root: only the file's own pages are evicted, the numbers may be warm")
        sequential_read_rate(blob)  # a virtual disk's host cache as warm as for the rounds
        reads, loads, weights = [], [], []
        for round_ in range(args.rounds):
            before = sequential_read_rate(blob)
            load, read = load_seconds(store, log, cold=True)
            after = sequential_read_rate(blob)
            reads.append(bracketing_rate(before, after))
            loads.append(file_size / load)
            weights.append(file_size / read)
            print(
                f"round {round_ + 1}: sequential read {reads[-1] / 1e6:.0f} MB/s "
                f"({before / 1e6:.0f} before the load, {after / 1e6:.0f} after), "
                f"load {load:.2f} s = {loads[-1] / 1e6:.0f} MB/s, "
                f"of it the weights' read {read:.2f} s = {weights[-1] / 1e6:.0f} MB/s",
                flush=True,
            )
    print(f"sequential_read_mb_per_s={statistics.median(reads) / 1e6:.0f}")
    print(f"load_mb_per_s={statistics.median(loads) / 1e6:.0f}")
    print(f"weights_read_mb_per_s={statistics.median(weights) / 1e6:.0f}")
    print(f"load_rate_vs_sequential_read_ratio={paired_ratio(loads, reads):.2f}")
    print(f"weights_read_rate_vs_sequential_read_ratio={paired_ratio(weights, reads):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

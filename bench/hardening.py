"""Hostile inputs, class by class, against a real ``corral serve`` process and the real test model.

What an attacker or a careless client controls: requests (text that is no Unicode, options past
llama.cpp's bounds, durations, roles, oversize prompts), model files (the malformed GGUF corpus
of ``tests/support/gguf_corpus.py``), registries (the loopback registry of
``tests/support/registry.py`` lying about sizes and digests, redirecting elsewhere, serving a
malformed model), links planted in the store, requests from other hosts and origins (DNS
rebinding), and chat templates that never finish. Each input is tried once; it is answered
correctly when the server answers it the way the threat model says (a 4xx, a refused pull, or a
verified success) and stays up.

After each class the server must still be alive (else it counts as a crash and is restarted),
and the bundled model must still answer a plain request (else the class wedged it). A directory
beside the store, which links point at, must be byte for byte and name for name what it was.

Prints ``class=<name> tried=N correct=M`` per class and, last, ``server_crashes``,
``wedged_models`` and ``files_outside_store_touched``. Exits 1 when any input was answered
wrongly or any of those three is not 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support when run as a script

from corral_runtime.store.digests import blob_filename  # noqa: E402
from corral_runtime.store.layout import TEMPLATE_LAYER, ModelStore  # noqa: E402
from corral_runtime.testmodel import ensure_test_model  # noqa: E402
from tests.support.gguf_corpus import encode, malformed_variants, tiny_model  # noqa: E402
from tests.support.registry import TestRegistry, running_registry  # noqa: E402
from tests.support.serveproc import (  # noqa: E402
    ServedProcess,
    gateway_process,
    serving_process,
)

MODEL = "gemma3:270m"
SECRET = "corral-bench-secret-outside-the-store"
TINY = encode(tiny_model())
TINY_DIGEST = "sha256:" + hashlib.sha256(TINY).hexdigest()
SHORT = {"num_predict": 2}

# An answer: (status, body text). A probe returns whether the answer is the correct one.
Probe = Callable[[httpx.Client], bool]


@dataclass
class Tally:
    tried: dict[str, int] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    crashes: int = 0
    wedged: int = 0

    def record(self, kind: str, what: str, ok: bool) -> None:
        self.tried[kind] = self.tried.get(kind, 0) + 1
        self.correct[kind] = self.correct.get(kind, 0) + int(ok)
        if not ok:
            self.wrong.append(f"{kind}: {what}")


def is_4xx(r: httpx.Response) -> bool:
    return 400 <= r.status_code < 500 and "error" in r.json()


def refused_pull(r: httpx.Response) -> bool:
    """A pull that did not succeed: a 4xx/507 before streaming, or an error line in the stream."""
    if r.status_code >= 400:
        return r.status_code < 500 or r.status_code == 507
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return (
        bool(lines)
        and "error" in lines[-1]
        and all(line.get("status") != "success" for line in lines)
    )


# -- requests --------------------------------------------------------------------------------


def request_probes() -> list[tuple[str, str, dict[str, Any], str]]:
    """(name, path, body, expected) with expected "4xx" or "ok"."""
    probes: list[tuple[str, str, dict[str, Any], str]] = []
    bad_text = ["\ud800", "a\udfffb", "\udbff\udc00\ud800"]
    for i, text in enumerate(bad_text):
        probes += [
            (f"surrogate-generate-{i}", "/api/generate", {"prompt": text}, "4xx"),
            (f"surrogate-system-{i}", "/api/generate", {"prompt": "hi", "system": text}, "4xx"),
            (
                f"surrogate-chat-{i}",
                "/api/chat",
                {"messages": [{"role": "user", "content": text}]},
                "4xx",
            ),
            (
                f"surrogate-openai-chat-{i}",
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": text}], "max_tokens": 2},
                "4xx",
            ),
            (f"surrogate-openai-completion-{i}", "/v1/completions", {"prompt": text}, "4xx"),
            (f"surrogate-embed-{i}", "/api/embed", {"input": [text]}, "4xx"),
            (f"surrogate-openai-embed-{i}", "/v1/embeddings", {"input": text}, "4xx"),
            (
                f"surrogate-stop-{i}",
                "/api/generate",
                {"prompt": "hi", "options": {"stop": [text]}},
                "4xx",
            ),
        ]
    for option, value in [
        ("num_ctx", 1),
        ("num_ctx", 8),
        ("num_ctx", 10**9),
        ("num_ctx", -1),
        ("num_ctx", 2**63),
        ("num_batch", 0),
        ("num_batch", -5),
        ("num_thread", 10**6),
        ("num_gpu", 2**40),
        ("top_k", -1),
        ("top_k", 2**40),
        ("top_p", -0.5),
        ("min_p", 7),
        ("temperature", -1),
        ("repeat_last_n", -5),
        ("num_predict", -7),
        ("num_keep", 2**40),
        ("seed", 2**70),
        ("temperature", "hot"),
    ]:
        options = {**SHORT, option: value}
        probes.append(
            (
                f"option-{option}={value}",
                "/api/generate",
                {"prompt": "hi", "options": options},
                "4xx",
            )
        )
    probes += [
        (
            "openai-max_tokens-negative",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3},
            "4xx",
        ),
        (
            "openai-temperature-huge",
            "/v1/completions",
            {"prompt": "hi", "temperature": 1e308, "max_tokens": 2},
            "4xx",
        ),
        (
            "openai-top_p-negative",
            "/v1/completions",
            {"prompt": "hi", "top_p": -1, "max_tokens": 2},
            "4xx",
        ),
    ]
    for value in [1e308, -1e308, "999999999h", "-999999999h", 2**70]:
        probes.append(
            (
                f"keep_alive={value}",
                "/api/generate",
                {"prompt": "hi", "options": SHORT, "keep_alive": value},
                "ok",
            )
        )
    for value in ["forever", "1x", "nan", "", [], {}]:
        probes.append(
            (
                f"keep_alive={value!r}",
                "/api/generate",
                {"prompt": "hi", "options": SHORT, "keep_alive": value},
                "4xx",
            )
        )
    for role in ["", "root", "System ", "\u0000"]:
        probes += [
            (
                f"role={role!r}",
                "/api/chat",
                {"messages": [{"role": role, "content": "hi"}], "options": SHORT},
                "4xx",
            ),
            (
                f"openai-role={role!r}",
                "/v1/chat/completions",
                {"messages": [{"role": role, "content": "hi"}], "max_tokens": 2},
                "4xx",
            ),
        ]
    probes += [
        (
            "prompt-past-context",
            "/api/generate",
            {"prompt": "hello " * 20000, "options": {**SHORT, "num_ctx": 512}, "truncate": False},
            "any",
        ),
        ("format-not-a-schema", "/api/generate", {"prompt": "hi", "format": 12}, "4xx"),
        (
            "format-schema-garbage",
            "/api/generate",
            {"prompt": "hi", "format": {"type": "wat"}, "options": SHORT},
            "any",
        ),
        (
            "tools-garbage",
            "/api/chat",
            {"messages": [{"role": "user", "content": "hi"}], "tools": [{"function": 5}]},
            "4xx",
        ),
        ("images-not-base64", "/api/generate", {"prompt": "hi", "images": ["%%%"]}, "4xx"),
    ]
    return probes


def run_requests(http: httpx.Client, tally: Tally, server: Callable[[], ServedProcess]) -> None:
    for name, path, body, expected in request_probes():
        body = {"model": MODEL, "stream": False, **body}
        try:
            r = http.post(path, content=json.dumps(body))
            ok = (
                is_4xx(r)
                if expected == "4xx"
                else r.status_code == 200
                if expected == "ok"
                else r.status_code < 500
            )
            # /api/ps keeps answering whatever keep_alive a request set.
            ok = ok and http.get("/api/ps").status_code == 200
        except httpx.HTTPError:
            ok = False
        tally.record("requests", name, ok and server().alive())


# -- model files -----------------------------------------------------------------------------


def run_model_files(http: httpx.Client, tally: Tally, server: Callable[[], ServedProcess]) -> None:
    for variant in malformed_variants():
        digest = "sha256:" + hashlib.sha256(variant.data).hexdigest()
        try:
            uploaded = http.post(f"/api/blobs/{digest}", content=variant.data)
            if uploaded.status_code >= 400:
                ok = 400 <= uploaded.status_code < 500
            else:
                created = http.post(
                    "/api/create",
                    json={
                        "model": f"bad-{variant.name}",
                        "files": {"m.gguf": digest},
                        "stream": False,
                    },
                )
                ok = is_4xx(created) and "not a valid model file" in created.text
                ok = (
                    ok
                    and http.post("/api/show", json={"model": f"bad-{variant.name}"}).status_code
                    == 404
                )
        except httpx.HTTPError:
            ok = False
        tally.record("model_files", variant.name, ok and server().alive())


# -- registries ------------------------------------------------------------------------------


def run_registries(
    http: httpx.Client, tally: Tally, server: Callable[[], ServedProcess], registry: TestRegistry
) -> None:
    host = registry.host
    cases: list[tuple[str, Callable[[], None], str]] = []

    def declared(*layers: tuple[str, object]) -> Callable[[], None]:
        def arrange() -> None:
            registry.add_declared_manifest("library", "liar", "latest", list(layers))

        return arrange

    for size in [2**62, -1, 1.5, "12", None, 2**1000]:
        cases.append((f"declared-size={size!r}", declared(("model", size)), f"{host}/library/liar"))
    cases.append(
        ("declared-many-layers", declared(*[("model", 10)] * 5000), f"{host}/library/liar")
    )
    cases.append(
        (
            "declared-huge-template",
            declared(("model", 100), ("template", 2**40)),
            f"{host}/library/liar",
        )
    )
    cases.append(("declared-past-free-space", declared(("model", 2**50)), f"{host}/library/liar"))

    def redirect(where: str, target: str) -> Callable[[], None]:
        def arrange() -> None:
            if where == "blobs":
                registry.hostility.redirect_blobs_to = target
            else:
                registry.hostility.redirect_manifests_to = target

        return arrange

    # Only loopback targets: the policy must refuse them by host and port, not by range.
    for where, target in [
        ("blobs", "http://localhost:9/blobs/x"),
        ("blobs", "http://127.0.0.2:9/blobs/x"),
        ("manifests", "http://127.0.0.1:9/v2/library/tiny/manifests/latest"),
        ("manifests", "file:///etc/passwd"),
    ]:
        cases.append(
            (f"redirect-{where}-{target}", redirect(where, target), f"{host}/library/tiny")
        )

    def corrupt() -> None:
        registry.faults.corrupt = True  # one byte flipped in every blob body

    cases.append(("blob-digest-mismatch", corrupt, f"{host}/library/tiny"))
    cases.append(("malformed-model", lambda: None, f"{host}/library/malformed"))
    for path in ["/etc/passwd", "/etc/no-such-file.gguf", "file:///etc/passwd", "pvc://x/y.gguf"]:
        cases.append((f"local-path-{path}", lambda: None, path))
    for url in ["http://127.0.0.2:9/x.gguf", "https://localhost:1/x.gguf", "gopher://x/y"]:
        cases.append((f"url-{url}", lambda: None, url))

    for name, arrange, model in cases:
        registry.reset()
        arrange()
        try:
            r = http.post("/api/pull", json={"model": model, "insecure": True}, timeout=120)
            ok = refused_pull(r)
        except httpx.HTTPError:
            ok = False
        tally.record("registries", name, ok and server().alive())
    registry.reset()
    # And the same registry, honest, is pulled from and verified.
    r = http.post(
        "/api/pull", json={"model": f"{host}/library/tiny", "insecure": True}, timeout=120
    )
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    tally.record(
        "registries", "honest-pull-succeeds", bool(lines) and lines[-1].get("status") == "success"
    )


# -- links in the store ----------------------------------------------------------------------


def run_store_links(
    http: httpx.Client,
    tally: Tally,
    server: Callable[[], ServedProcess],
    store: ModelStore,
    registry: TestRegistry,
    outside: Path,
) -> None:
    tiny = f"{registry.host}/library/tiny"

    def pulled() -> None:
        r = http.post("/api/pull", json={"model": tiny, "insecure": True}, timeout=120)
        assert r.status_code == 200, r.text

    def no_secret(r: httpx.Response) -> bool:
        return SECRET not in r.text and str(outside) not in r.text and str(store.root) not in r.text

    # A text layer that is a link to a file outside: /api/show must not read it.
    pulled()
    template = store.get(tiny).manifest.layer(TEMPLATE_LAYER)
    assert template is not None
    path = store.blob_path(template.digest)
    path.unlink()
    path.symlink_to(outside / "secret.txt")
    shown = http.post("/api/show", json={"model": tiny})
    tally.record(
        "store_links", "linked-text-layer-show", no_secret(shown) and shown.status_code != 200
    )
    tally.record("store_links", "linked-text-layer-tags", no_secret(http.get("/api/tags")))
    path.unlink()
    http.request("DELETE", "/api/delete", json={"model": tiny})

    # A model blob that is a link (to a copy outside): neither loaded nor shown.
    pulled()
    path = store.blob_path(TINY_DIGEST)
    path.unlink()
    path.symlink_to(outside / "model.gguf")
    generated = http.post(
        "/api/generate", json={"model": tiny, "prompt": "hi", "stream": False, "options": SHORT}
    )
    tally.record(
        "store_links",
        "linked-model-blob-generate",
        generated.status_code >= 400 and no_secret(generated),
    )
    head = http.head(f"/api/blobs/{TINY_DIGEST}")
    tally.record("store_links", "linked-model-blob-head", head.status_code == 404)
    path.unlink()
    http.request("DELETE", "/api/delete", json={"model": tiny})

    # A partial and its lock that are links: a pull writes and creates nothing outside.
    store.blobs.mkdir(parents=True, exist_ok=True)
    partial = store.blobs / (blob_filename(TINY_DIGEST) + "-partial")
    partial.symlink_to(outside / "secret.txt")
    (store.blobs / (partial.name + ".lock")).symlink_to(outside / "created-by-lock")
    r = http.post("/api/pull", json={"model": tiny, "insecure": True}, timeout=120)
    tally.record("store_links", "linked-partial-and-lock-pull", r.status_code < 500)

    # A manifests directory that is a link to a tree outside: not listed, not written.
    (store.manifests / "registry.ollama.ai").mkdir(parents=True, exist_ok=True)
    (store.manifests / "registry.ollama.ai" / "linked").symlink_to(outside / "tree")
    listed = http.get("/api/tags")
    tally.record("store_links", "linked-manifest-dir-list", "linked" not in listed.text)
    copied = http.post("/api/copy", json={"source": MODEL, "destination": "linked/copied"})
    tally.record("store_links", "linked-manifest-dir-copy", copied.status_code >= 400)
    deleted = http.request("DELETE", "/api/delete", json={"model": "linked/x"})
    tally.record("store_links", "linked-manifest-dir-delete", deleted.status_code >= 400)
    tally.record("store_links", "server-alive", server().alive())


# -- the perimeter ---------------------------------------------------------------------------


FOREIGN_HOSTS = ["evil.example.com", "evil.example.com:11434", "localhost.evil.example.com", "x"]
FOREIGN_ORIGINS = ["http://evil.example.com", "null-ish://x", "https://127.0.0.1.evil.example.com"]
INFERENCE = [
    ("GET", "/api/tags", None),
    ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    ),
]
MANAGEMENT = [
    ("POST", "/api/copy", {"source": MODEL, "destination": "stolen"}),
    ("DELETE", "/api/delete", {"model": MODEL}),
]


def run_perimeter(
    http: httpx.Client,
    tally: Tally,
    kind: str = "perimeter",
    operations: list[tuple[str, str, dict[str, Any] | None]] = INFERENCE + MANAGEMENT,
) -> None:
    """A rebound name (with its page's Origin) and foreign origins get a 403 for everything."""
    for host in FOREIGN_HOSTS:
        for method, path, body in operations:
            headers = {"Host": host, "Origin": f"http://{host}"}
            r = http.request(method, path, json=body, headers=headers)
            tally.record(kind, f"host={host} {method} {path}", r.status_code == 403)
    for origin in FOREIGN_ORIGINS:
        for method, path, body in operations:
            r = http.request(method, path, json=body, headers={"Origin": origin})
            tally.record(kind, f"origin={origin} {method} {path}", r.status_code == 403)


def run_gateway(http: httpx.Client, tally: Tally) -> None:
    """The gateway in front of the server: its own perimeter, and hostile requests relayed as
    the server's 4xx (never a 5xx of the gateway's)."""
    run_perimeter(http, tally, "gateway", INFERENCE)
    for name, path, body, expected in request_probes():
        if not name.startswith(("surrogate", "option-num_ctx", "keep_alive", "role")):
            continue
        r = http.post(path, content=json.dumps({"model": MODEL, "stream": False, **body}))
        ok = is_4xx(r) if expected == "4xx" else r.status_code < 500
        tally.record("gateway", f"relayed {name}", ok)


def run_server_perimeter(http: httpx.Client, tally: Tally) -> None:
    run_perimeter(http, tally)
    still_there = http.post("/api/show", json={"model": MODEL}).status_code == 200
    copied = http.post("/api/show", json={"model": "stolen"}).status_code != 404
    tally.record("perimeter", "model-untouched", still_there and not copied)


# -- templates -------------------------------------------------------------------------------

SLOW_TEMPLATES = {
    "go-nested-ranges": (
        "{{ range .Messages }}{{ range $.Messages }}{{ range $.Messages }}{{ range $.Messages }}"
        "{{ .Content }}{{ end }}{{ end }}{{ end }}{{ end }}"
    ),
    "go-huge-output": "{{ range .Messages }}{{ .Content }}{{ .Content }}{{ .Content }}{{ end }}",
}


@contextmanager
def healthz_latencies(base_url: str) -> Iterator[list[float]]:
    """How long each ``/healthz`` took, polled every 50 ms while the block runs."""
    latencies: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as probe:
            while not stop.is_set():
                started = time.monotonic()
                probe.get("/healthz")
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield latencies
    finally:
        stop.set()
        watcher.join()


def run_templates(http: httpx.Client, tally: Tally) -> None:
    long_text = "x" * 2000
    messages = [{"role": "user", "content": long_text}] * 40
    for name, template in SLOW_TEMPLATES.items():
        created = http.post(
            "/api/create",
            json={"model": f"tpl-{name}", "from": MODEL, "template": template, "stream": False},
        )
        if created.status_code >= 400:
            tally.record("templates", name, 400 <= created.status_code < 500)
            continue
        with healthz_latencies(str(http.base_url)) as latencies:
            r = http.post(
                "/api/chat",
                json={
                    "model": f"tpl-{name}",
                    "messages": messages,
                    "stream": False,
                    "options": SHORT,
                },
                timeout=120,
            )
        ok = r.status_code < 500 and (max(latencies, default=0.0) < 1.0)
        tally.record("templates", name, ok)


# -- the run ---------------------------------------------------------------------------------


def outside_snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    } | {str(p.relative_to(folder)): (b"<dir>", 0) for p in folder.rglob("*") if p.is_dir()}


def run_through_gateway(server: ServedProcess, tally: Tally, work: Path) -> None:
    endpoint = server.base_url.removeprefix("http://")
    servers = {"local": {"models": [MODEL], "endpoints": [endpoint]}}
    env = {"CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(servers)}
    with (
        gateway_process(env, log=work / "gateway.log") as gateway,
        httpx.Client(base_url=gateway.base_url, timeout=120) as http,
    ):
        run_gateway(http, tally)
        tally.record("gateway", "gateway-alive", gateway.alive())


@contextmanager
def restarting_server(
    store: ModelStore, args: list[str], logs: Path, tally: Tally
) -> Iterator[Callable[[], ServedProcess]]:
    """The server under test; ``current()`` restarts it (counting a crash) when it died."""
    with ExitStack() as stack:
        holder: list[ServedProcess] = []
        count = 0

        def start() -> ServedProcess:
            nonlocal count
            count += 1
            served = stack.enter_context(
                serving_process(
                    store.root, *args, log=logs / f"serve-{count}.log", start_timeout=120
                )
            )
            holder.append(served)
            return served

        def current() -> ServedProcess:
            if not holder[-1].alive():
                tally.crashes += 1
                print(f"server died; its log ends:\n{holder[-1].log_tail()}", file=sys.stderr)
                start()
            return holder[-1]

        start()
        yield current


def still_answers(server: ServedProcess) -> bool:
    try:
        with httpx.Client(base_url=server.base_url, timeout=180) as http:
            r = http.post(
                "/api/generate",
                json={"model": MODEL, "prompt": "Hi", "stream": False, "options": SHORT},
            )
            return r.status_code == 200 and http.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corral-hardening-"))
    store = ModelStore(work / "models")
    ensure_test_model(store)
    outside = work / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "model.gguf").write_bytes(TINY)
    (outside / "tree" / "x").mkdir(parents=True)
    tally = Tally()
    with running_registry(work / "registry") as registry:
        registry.add_model("library", "tiny", "latest", TINY, template="{{ .Prompt }}")
        registry.add_model("library", "malformed", "latest", malformed_variants()[0].data)
        server_args = [
            "--context-length", "1024",
            "--threads", "2",
            "--log-level", "warning",
            "--pull-allowed-hosts", f"{registry.host},127.0.0.1:{registry.cdn_port}",
            "--pull-allow-insecure",
        ]  # fmt: skip
        before = outside_snapshot(outside)
        with restarting_server(store, server_args, work, tally) as server:
            classes: list[tuple[str, Callable[[httpx.Client], None]]] = [
                ("requests", lambda h: run_requests(h, tally, server)),
                ("model_files", lambda h: run_model_files(h, tally, server)),
                ("registries", lambda h: run_registries(h, tally, server, registry)),
                (
                    "store_links",
                    lambda h: run_store_links(h, tally, server, store, registry, outside),
                ),
                ("perimeter", lambda h: run_server_perimeter(h, tally)),
                ("gateway", lambda h: run_through_gateway(server(), tally, work)),
                ("templates", lambda h: run_templates(h, tally)),
            ]
            for name, run in classes:
                started = time.monotonic()
                with httpx.Client(base_url=server().base_url, timeout=120) as http:
                    try:
                        run(http)
                    except (httpx.HTTPError, AssertionError, OSError, TypeError, ValueError) as exc:
                        tally.record(name, f"the class stopped: {exc!r}", False)
                if not still_answers(server()):
                    tally.wedged += 1
                    print(f"{name}: the model no longer answers", file=sys.stderr)
                print(
                    f"class={name} tried={tally.tried.get(name, 0)} "
                    f"correct={tally.correct.get(name, 0)} seconds={time.monotonic() - started:.1f}"
                )
        # The planted links themselves are the store's; what they point at must be untouched.
        after = outside_snapshot(outside)
    touched = sorted(
        set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]}
    )
    for line in tally.wrong:
        print(f"wrong: {line}", file=sys.stderr)
    for name in touched:
        print(f"touched outside the store: {name}", file=sys.stderr)
    total = sum(tally.tried.values())
    print(f"total tried={total} correct={sum(tally.correct.values())}")
    print(f"server_crashes={tally.crashes}")
    print(f"wedged_models={tally.wedged}")
    print(f"files_outside_store_touched={len(touched)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if tally.wrong or tally.crashes or tally.wedged or touched else 0


if __name__ == "__main__":
    sys.exit(main())

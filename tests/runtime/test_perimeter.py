"""The runtime's perimeter on real servers: DNS rebinding and foreign browser origins are
refused, inference keys cannot manage models, management can be turned off, the OpenAPI schema
is public, and SIGTERM lets a stream in flight finish while new requests and readiness answer
503 (``corral serve`` as a process of its own, since the test sends it a signal)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral_operator.gateway.settings import GatewaySettings
from corral_runtime.store.layout import ModelStore
from corral_runtime.store.names import parse_name
from corral_runtime.testmodel import ensure_test_model
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.runtime.test_gateway_proxy import pod_address, run_gateway
from tests.support.serveproc import serving_process, wait_draining

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
EVIL = {"Host": "evil.example.com", "Origin": "http://evil.example.com"}


@pytest.fixture(scope="module")
def own_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store of this module's own: the tests below copy and delete models in it."""
    store = ModelStore(tmp_path_factory.mktemp("perimeter-models"))
    ensure_test_model(store)
    return store


@pytest.fixture(scope="module")
def open_server(own_store: ModelStore) -> Iterator[RunningServer]:
    """No keys, as a local ``corral serve``; one configured host and one configured origin."""
    settings = settings_for(
        own_store.root,
        allowed_hosts=["corral-srv.team.svc", ".example.org"],
        allowed_origins=["https://*.tools.example.org"],
    )
    with serve(settings, own_store) as server:
        yield server


def _exists(store: ModelStore, name: str) -> bool:
    try:
        store.read_manifest(parse_name(name))
    except LookupError:
        return False
    return True


def test_a_rebound_name_cannot_list_copy_or_delete(
    open_server: RunningServer, own_store: ModelStore
) -> None:
    with httpx.Client(base_url=open_server.base_url, headers=EVIL, timeout=30) as client:
        listing = client.get("/api/tags")
        copied = client.post("/api/copy", json={"source": MODEL, "destination": "stolen"})
        deleted = client.request("DELETE", "/api/delete", json={"model": MODEL})
        openai_listing = client.get("/v1/models")
    for answer in (listing, copied, deleted):
        assert answer.status_code == 403
        assert "evil.example.com" in answer.json()["error"]
    assert openai_listing.status_code == 403
    assert openai_listing.json()["error"]["type"] == "permission_error"
    assert _exists(own_store, MODEL)
    assert not _exists(own_store, "stolen")


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:{port}",
        "127.0.0.1:{port}",
        "[::1]:{port}",
        "10.244.3.7:8080",  # a pod IP: the kubelet's probes and the gateway come this way
        "corral-srv.team.svc",  # configured
        "api.example.org:443",  # configured as .example.org
    ],
)
def test_loopback_addresses_and_configured_hosts_are_served(
    open_server: RunningServer, host: str
) -> None:
    port = open_server.base_url.rsplit(":", 1)[1]
    headers = {"Host": host.format(port=port)}
    with httpx.Client(base_url=open_server.base_url, headers=headers, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        tags = client.get("/api/tags")
    assert tags.status_code == 200
    assert MODEL in [m["name"] for m in tags.json()["models"]]


def test_a_foreign_page_cannot_manage_models_through_loopback(
    open_server: RunningServer, own_store: ModelStore
) -> None:
    """A page on another site posting to 127.0.0.1 (CSRF): the Host is fine, the Origin not."""
    foreign = {"Origin": "https://evil.example.com"}
    with httpx.Client(base_url=open_server.base_url, headers=foreign, timeout=30) as client:
        copied = client.post("/api/copy", json={"source": MODEL, "destination": "csrf"})
        preflight = client.options("/api/chat", headers={"Access-Control-Request-Method": "POST"})
    assert copied.status_code == 403
    assert copied.json() == {
        "error": "origin 'https://evil.example.com' is not allowed; "
        "allow it with CORRAL_ALLOWED_ORIGINS"
    }
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert not _exists(own_store, "csrf")


@pytest.mark.parametrize("origin", ["http://localhost:3000", "https://app.tools.example.org"])
def test_allowed_origins_get_cors_answers(open_server: RunningServer, origin: str) -> None:
    with httpx.Client(
        base_url=open_server.base_url, headers={"Origin": origin}, timeout=30
    ) as client:
        preflight = client.options(
            "/api/chat",
            headers={
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization",
            },
        )
        tags = client.get("/api/tags")
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type,authorization"
    assert tags.status_code == 200
    assert tags.headers["access-control-allow-origin"] == origin


@pytest.fixture(scope="module")
def keyed_server(own_store: ModelStore) -> Iterator[RunningServer]:
    settings = settings_for(own_store.root, api_key="infer-key", admin_api_key="admin-key")
    with serve(settings, own_store) as server:
        yield server


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_inference_key_reads_but_cannot_manage(
    keyed_server: RunningServer, own_store: ModelStore
) -> None:
    base = keyed_server.base_url
    with ollama.Client(host=base, headers=_bearer("infer-key")) as client:
        assert MODEL in [m.model for m in client.list().models]
        assert client.show(MODEL).modelfile
        for manage in (
            lambda: client.copy(MODEL, "by-inference-key"),
            lambda: client.delete(MODEL),
            lambda: client.pull("library/other:1b", stream=False),
            lambda: client.create("made-by-inference-key", from_=MODEL, stream=False),
        ):
            with pytest.raises(ollama.ResponseError) as refused:
                manage()
            assert refused.value.status_code == 403
            assert "admin API key" in refused.value.error
    head = httpx.head(base + "/api/blobs/sha256:" + "0" * 64, headers=_bearer("infer-key"))
    assert head.status_code == 403
    anonymous = httpx.post(base + "/api/copy", json={"source": MODEL, "destination": "anon"})
    assert anonymous.status_code == 401
    assert _exists(own_store, MODEL)
    assert not _exists(own_store, "by-inference-key")
    assert not _exists(own_store, "made-by-inference-key")
    assert not _exists(own_store, "anon")


def test_the_admin_key_manages_and_infers(
    keyed_server: RunningServer, own_store: ModelStore
) -> None:
    with ollama.Client(host=keyed_server.base_url, headers=_bearer("admin-key")) as client:
        client.copy(MODEL, "admin-copy")
        assert _exists(own_store, "admin-copy")
        assert "admin-copy:latest" in [m.model for m in client.list().models]
        client.delete("admin-copy")
    assert not _exists(own_store, "admin-copy")
    assert _exists(own_store, MODEL)


def test_one_key_alone_still_grants_management(own_store: ModelStore) -> None:
    """Without an admin key, the API key does everything, as it did before there was one."""
    settings = settings_for(own_store.root, api_key="only-key")
    with (
        serve(settings, own_store) as server,
        ollama.Client(host=server.base_url, headers=_bearer("only-key")) as client,
    ):
        client.copy(MODEL, "one-key-copy")
        client.delete("one-key-copy")
    assert not _exists(own_store, "one-key-copy")


def test_management_turned_off_is_403_for_everyone(own_store: ModelStore) -> None:
    settings = settings_for(own_store.root, management=False, admin_api_key="admin-key")
    with serve(settings, own_store) as server:
        with ollama.Client(host=server.base_url, headers=_bearer("admin-key")) as client:
            assert MODEL in [m.model for m in client.list().models]
            with pytest.raises(ollama.ResponseError) as refused:
                client.copy(MODEL, "while-off")
        upload = httpx.post(
            server.base_url + "/api/blobs/sha256:" + "0" * 64,
            content=b"GGUF",
            headers=_bearer("admin-key"),
        )
    assert refused.value.status_code == 403
    assert "model management is disabled" in refused.value.error
    assert upload.status_code == 403
    assert not _exists(own_store, "while-off")
    assert not own_store.has_blob("sha256:" + "0" * 64)


def test_openapi_schema_is_public(keyed_server: RunningServer) -> None:
    answer = httpx.get(keyed_server.base_url + "/openapi.json")
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    for path in ("/api/chat", "/api/generate", "/api/pull", "/v1/chat/completions"):
        assert path in paths


def test_the_gateway_passes_on_no_management_and_keeps_origins_to_itself(
    runtime_server: RunningServer,
) -> None:
    settings = GatewaySettings.model_validate(
        {
            # The gateway allows this origin; the pod, which does not, never sees it.
            "allowed_origins": ["https://chat.example.org"],
            "static_servers": {
                "local": {"models": [MODEL], "endpoints": [pod_address(runtime_server)]}
            },
        }
    )
    blob = "/api/blobs/sha256:" + "0" * 64
    with run_gateway(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = [
            client.post("/api/copy", json={"source": MODEL, "destination": "via-gateway"}),
            client.request("DELETE", "/api/delete", json={"model": MODEL}),
            client.post("/api/pull", json={"model": "library/x:1", "stream": False}),
            client.post("/api/create", json={"model": "x", "from": MODEL, "stream": False}),
            client.head(blob),
            client.post(blob, content=b"GGUF"),
        ]
        shown = client.post(
            "/api/show", json={"model": MODEL}, headers={"Origin": "https://chat.example.org"}
        )
    assert [r.status_code for r in refused] == [404] * len(refused)
    assert shown.status_code == 200, shown.text
    assert not _exists(runtime_server.store, "via-gateway")


# -- SIGTERM -------------------------------------------------------------------------------


SMALL = ("--context-length", "2048", "--threads", "2")


def test_sigterm_drains_a_stream_and_refuses_new_requests(
    model_store: ModelStore, tmp_path: Path
) -> None:
    request = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5,",
        "raw": True,
        "options": {"num_predict": 48, "temperature": 0},
    }
    with (
        serving_process(
            model_store.root, *SMALL, "--graceful-shutdown", "60", log=tmp_path / "serve.log"
        ) as served,
        httpx.Client(base_url=served.base_url, timeout=120) as client,
    ):
        client.post("/api/generate", json={"model": MODEL, "prompt": ""})  # load first
        assert client.get("/readyz").status_code == 200
        with client.stream("POST", "/api/generate", json=request) as stream:
            lines = stream.iter_lines()
            assert json.loads(next(lines))["done"] is False
            served.process.send_signal(signal.SIGTERM)
            readiness = wait_draining(served.base_url)
            assert readiness.status_code == 503
            late = httpx.post(served.base_url + "/api/generate", json=request, timeout=30)
            late_openai = httpx.post(
                served.base_url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            alive = httpx.get(served.base_url + "/healthz", timeout=5)
            chunks = [json.loads(line) for line in lines if line]
        # The stream in flight ran to its end.
        assert chunks[-1]["done"] is True
        assert chunks[-1]["done_reason"] == "length"
        assert chunks[-1]["eval_count"] == 48
        # New requests were refused, in each API's shape, and liveness stayed green.
        assert late.status_code == 503
        assert late.headers["retry-after"] == "1"
        assert late.json() == {"error": "the server is shutting down; try again"}
        assert late_openai.status_code == 503
        assert late_openai.json()["error"]["message"] == "the server is shutting down; try again"
        assert alive.status_code == 200
        # Nothing left in flight: the server exits on its own, well within the grace.
        assert served.process.wait(timeout=20) == 0, served.log_tail()


def test_sigterm_stops_a_stream_that_outlasts_the_grace(
    model_store: ModelStore, tmp_path: Path
) -> None:
    endless = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5,",
        "raw": True,
        "options": {"num_predict": -1, "temperature": 0},
    }
    with (
        serving_process(
            model_store.root, *SMALL, "--graceful-shutdown", "2", log=tmp_path / "serve.log"
        ) as served,
        httpx.Client(base_url=served.base_url, timeout=120) as client,
        client.stream("POST", "/api/generate", json=endless) as stream,
    ):
        lines = stream.iter_lines()
        assert json.loads(next(lines))["done"] is False
        served.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert served.process.wait(timeout=30) == 0, served.log_tail()
        elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s to exit with a 2s grace"

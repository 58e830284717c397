"""The gateway's own perimeter and graceful removal, in front of a real runtime server and driven
by the official clients: bound to loopback, a rebound DNS name can neither list nor chat, while
loopback names and configured hosts can; a foreign browser origin is refused and an allowed one
gets CORS answers; on SIGTERM the gateway (its own process) lets a stream finish while new
requests and readiness answer 503, and exits within its grace."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral_operator.gateway.settings import GatewaySettings
from tests.runtime.conftest import RunningServer
from tests.runtime.test_gateway_proxy import GREEDY, MODEL, pod_address, run_gateway
from tests.support.serveproc import gateway_process, wait_draining

pytestmark = pytest.mark.runtime

EVIL = {"Host": "evil.example.com:11434", "Origin": "http://evil.example.com:11434"}
CHAT = [{"role": "user", "content": "Hello"}]


def gateway_settings(runtime_server: RunningServer, **overrides: Any) -> GatewaySettings:
    """The gateway bound to loopback (as ``make up`` runs it) in front of ``runtime_server``."""
    return GatewaySettings.model_validate(
        {
            "host": "127.0.0.1",
            "static_servers": {
                "local": {"models": [MODEL], "endpoints": [pod_address(runtime_server)]}
            },
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def gateway_url(runtime_server: RunningServer) -> Iterator[str]:
    settings = gateway_settings(
        runtime_server,
        allowed_hosts=["ollama.example.com"],
        allowed_origins=["https://chat.example.com"],
    )
    with run_gateway(settings) as url:
        yield url


def test_a_rebound_name_can_neither_list_nor_chat(gateway_url: str) -> None:
    with ollama.Client(host=gateway_url, headers=EVIL) as client:
        for call in (
            client.list,
            client.ps,
            lambda: client.chat(model=MODEL, messages=CHAT, options=GREEDY),
            lambda: client.show(MODEL),
        ):
            with pytest.raises(ollama.ResponseError) as refused:
                call()
            assert refused.value.status_code == 403
            assert "host 'evil.example.com' is not allowed" in refused.value.error
    with openai.OpenAI(
        base_url=gateway_url + "/v1", api_key="unused", max_retries=0, default_headers=EVIL
    ) as openai_client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            openai_client.models.list()
        assert denied.value.body == {
            "message": "host 'evil.example.com' is not allowed; "
            "allow it with CORRAL_GATEWAY_ALLOWED_HOSTS",
            "type": "permission_error",
            "param": None,
            "code": None,
        }
        with pytest.raises(openai.PermissionDeniedError):
            openai_client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)


@pytest.mark.parametrize(
    "host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "ollama.example.com"]
)
def test_loopback_names_and_configured_hosts_chat(gateway_url: str, host: str) -> None:
    port = gateway_url.rsplit(":", 1)[1]
    with ollama.Client(host=gateway_url, headers={"Host": host.format(port=port)}) as client:
        assert [m.model for m in client.list().models] == [MODEL]
        reply = client.chat(model=MODEL, messages=CHAT, options=GREEDY)
    assert reply.done is True


def test_an_allowed_origin_chats_with_cors_and_a_foreign_one_cannot(gateway_url: str) -> None:
    page = {"Origin": "https://chat.example.com"}
    with ollama.Client(host=gateway_url, headers=page) as client:
        assert client.chat(model=MODEL, messages=CHAT, options=GREEDY).done is True
    with httpx.Client(base_url=gateway_url, timeout=60) as http:
        listed = http.get("/api/tags", headers=page)
        asked = {"Access-Control-Request-Method": "POST"}
        preflight = http.options("/api/chat", headers={**page, **asked})
        foreign = {"Origin": "https://evil.example.com"}
        refused = http.post("/api/chat", json={"model": MODEL, "messages": CHAT}, headers=foreign)
        refused_preflight = http.options("/api/chat", headers={**foreign, **asked})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "origin 'https://evil.example.com' is not allowed; "
        "allow it with CORRAL_GATEWAY_ALLOWED_ORIGINS"
    }
    assert refused_preflight.status_code == 403


def test_bound_elsewhere_with_allowed_hosts_only_those_names_are_served(
    runtime_server: RunningServer,
) -> None:
    """In a pod (bound to 0.0.0.0) every Host is served until allowed_hosts names the Service's
    names; then a rebound name is refused and the Service's names and addresses are not."""
    service = "corral-gateway.corral-system.svc"
    open_settings = gateway_settings(runtime_server, host="0.0.0.0")
    closed_settings = gateway_settings(runtime_server, host="0.0.0.0", allowed_hosts=[service])
    with run_gateway(open_settings) as url:
        served = httpx.get(url + "/api/tags", headers={"Host": "corral.example.com"})
    with run_gateway(closed_settings) as url:
        rebound = httpx.get(url + "/api/tags", headers={"Host": "evil.example.com"})
        by_service = httpx.get(url + "/api/tags", headers={"Host": f"{service}:11434"})
        by_address = httpx.get(url + "/api/tags", headers={"Host": "10.96.0.12:11434"})
    assert served.status_code == 200
    assert rebound.status_code == 403
    assert by_service.status_code == 200
    assert by_address.status_code == 200


# -- SIGTERM -------------------------------------------------------------------------------


def gateway_env(runtime_server: RunningServer, grace_seconds: int) -> dict[str, str]:
    servers = {"local": {"models": [MODEL], "endpoints": [pod_address(runtime_server)]}}
    return {
        "CORRAL_GATEWAY_STATIC_SERVERS": json.dumps(servers),
        "CORRAL_GATEWAY_GRACEFUL_SHUTDOWN_SECONDS": str(grace_seconds),
    }


def counting(num_predict: int) -> dict[str, Any]:
    """A raw generation that runs exactly ``num_predict`` tokens (unless stopped)."""
    return {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5,",
        "raw": True,
        "options": {"num_predict": num_predict, "temperature": 0},
    }


def test_sigterm_lets_a_stream_finish_and_refuses_new_requests(
    runtime_server: RunningServer, tmp_path: Path
) -> None:
    request = counting(48)
    with (
        gateway_process(gateway_env(runtime_server, 60), log=tmp_path / "gateway.log") as gateway,
        httpx.Client(base_url=gateway.base_url, timeout=120) as client,
    ):
        with client.stream("POST", "/api/generate", json=request) as stream:
            lines = stream.iter_lines()
            assert json.loads(next(lines))["done"] is False
            gateway.process.send_signal(signal.SIGTERM)
            readiness = wait_draining(gateway.base_url)
            late = httpx.post(gateway.base_url + "/api/generate", json=request, timeout=30)
            late_openai = httpx.post(
                gateway.base_url + "/v1/chat/completions",
                json={"model": MODEL, "messages": CHAT},
                timeout=30,
            )
            alive = httpx.get(gateway.base_url + "/healthz", timeout=5)
            chunks = [json.loads(line) for line in lines if line]
        # The stream in flight ran to its end through the draining gateway.
        assert chunks[-1]["done"] is True
        assert chunks[-1]["eval_count"] == 48
        assert readiness.status_code == 503
        assert late.status_code == 503
        assert late.headers["retry-after"] == "1"
        assert late.json() == {"error": "the gateway is shutting down; try again"}
        assert late_openai.status_code == 503
        assert late_openai.json()["error"]["message"] == "the gateway is shutting down; try again"
        assert alive.status_code == 200
        # Nothing left in flight: the gateway exits on its own, well within the grace.
        assert gateway.process.wait(timeout=20) == 0, gateway.log_tail()


def test_sigterm_ends_a_stream_that_outlasts_the_grace(
    runtime_server: RunningServer, tmp_path: Path
) -> None:
    with (
        gateway_process(gateway_env(runtime_server, 2), log=tmp_path / "gateway.log") as gateway,
        httpx.Client(base_url=gateway.base_url, timeout=120) as client,
        client.stream("POST", "/api/generate", json=counting(1000)) as stream,
    ):
        assert json.loads(next(stream.iter_lines()))["done"] is False
        gateway.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert gateway.process.wait(timeout=30) == 0, gateway.log_tail()
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s to exit with a 2s grace"

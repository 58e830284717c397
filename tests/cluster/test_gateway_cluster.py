"""The gateway's cluster backend and the keep-alive against the real control plane (no runtime
pods run here): routing from watched Models and ModelServers, the wake-up through the scale
subresource with lastRequestTime recorded first, a held request failing at its deadline with
the reason, unknown models answered 404 without scaling, and the keep-alive timer's scale-down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from corral_operator import api
from corral_operator.api import ANNOTATION_IDLE_DEADLINE, ANNOTATION_IN_FLIGHT
from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.handlers.context import Context
from corral_operator.handlers.keepalive import tick
from corral_operator.kube import Kube
from corral_operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster


def custom(k8s_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_client)


def create_ready_model(k8s_client: Any, namespace: str, name: str, served: str) -> None:
    objects = custom(k8s_client)
    objects.create_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        api.MODELS,
        {
            "apiVersion": api.API_VERSION,
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {"source": served},
        },
    )
    status = {
        "name": served,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Pulled",
                "message": "pulled",
                "lastTransitionTime": api.rfc3339(datetime.now(UTC)),
            }
        ],
    }
    Kube(k8s_client).merge_patch("Model", namespace, name, {"status": status}, "status")


def create_server(k8s_client: Any, namespace: str, name: str, models: list[str]) -> None:
    custom(k8s_client).create_namespaced_custom_object(
        api.GROUP,
        api.VERSION,
        namespace,
        api.MODELSERVERS,
        {
            "apiVersion": api.API_VERSION,
            "kind": "ModelServer",
            "metadata": {"name": name},
            "spec": {"models": models, "minReplicas": 0, "maxReplicas": 2, "keepAliveSeconds": 5},
        },
    )


def get_server(k8s_client: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        custom(k8s_client).get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.MODELSERVERS, name
        )
    )


@pytest.fixture
async def gateway(crds: None, kubeconfig: Path, namespace: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        kubeconfig=kubeconfig,
        namespaces=[namespace],
        hold_deadline_seconds=3.0,
        heartbeat_seconds=0.5,
        activity_interval_seconds=0.5,
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


async def wait_listed(http: httpx.AsyncClient, model: str) -> None:
    for _ in range(100):
        ids = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
        if model in ids:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{model} never listed")


async def test_held_request_wakes_the_server_and_fails_at_deadline(
    gateway: httpx.AsyncClient, k8s_client: Any, namespace: str
) -> None:
    create_ready_model(k8s_client, namespace, "gemma", "gemma3:270m")
    create_server(k8s_client, namespace, "cold", ["gemma"])
    await wait_listed(gateway, "gemma3:270m")
    tags = (await gateway.get("/api/tags")).json()["models"]
    assert [t["name"] for t in tags] == ["gemma3:270m"]

    missing = await gateway.post("/api/generate", json={"model": "other:1b", "stream": False})
    assert missing.status_code == 404
    assert "replicas" not in get_server(k8s_client, namespace, "cold")["spec"]

    started = datetime.now(UTC)
    held = await gateway.post(
        "/api/generate", json={"model": "gemma3:270m", "prompt": "x", "stream": False}
    )
    assert held.status_code == 504
    assert "did not become ready within 3s" in held.json()["error"]
    server = get_server(k8s_client, namespace, "cold")
    assert server["spec"]["replicas"] == 1
    last = api.parse_time(server["status"]["lastRequestTime"])
    assert last is not None and last >= started.replace(microsecond=0)
    metrics = (await gateway.get("/metrics")).text
    assert "corral_gateway_scale_events_total{" in metrics


async def test_an_unload_does_not_wake_a_server_at_zero_replicas(
    gateway: httpx.AsyncClient, k8s_client: Any, namespace: str
) -> None:
    # What `corral stop` / `ollama stop` sends through the gateway to a sleeping server.
    create_ready_model(k8s_client, namespace, "gemma", "gemma3:270m")
    create_server(k8s_client, namespace, "asleep", ["gemma"])
    await wait_listed(gateway, "gemma3:270m")
    for path in ("/api/generate", "/api/chat"):
        answer = await gateway.post(path, json={"model": "gemma3:270m", "keep_alive": 0})
        assert answer.status_code == 200
        assert (answer.json()["done"], answer.json()["done_reason"]) == (True, "unload")
    await _annotation(k8s_client, namespace, "asleep", lambda d: d is not None)
    server = get_server(k8s_client, namespace, "asleep")
    assert "replicas" not in server["spec"]
    assert (server["metadata"].get("annotations") or {}).get(api.ANNOTATION_WAKE) is None


async def test_keep_alive_scales_an_idle_server_to_zero(
    crds: None, k8s_client: Any, namespace: str
) -> None:
    create_server(k8s_client, namespace, "idle", ["gemma"])
    ctx = Context(kube=Kube(k8s_client), settings=OperatorSettings())
    ctx.kube.scale("ModelServer", namespace, "idle", 1, unset=True)
    log = logging.getLogger("test")
    now = datetime.now(UTC)
    last = {"lastRequestTime": api.rfc3339(now - timedelta(seconds=2))}
    ctx.kube.patch_status("ModelServer", namespace, "idle", last)
    tick(ctx, namespace, "idle", now, log)
    assert get_server(k8s_client, namespace, "idle")["spec"]["replicas"] == 1
    last = {"lastRequestTime": api.rfc3339(now - timedelta(seconds=6))}
    ctx.kube.patch_status("ModelServer", namespace, "idle", last)
    tick(ctx, namespace, "idle", now, log)
    assert get_server(k8s_client, namespace, "idle")["spec"]["replicas"] == 0


async def _annotation(k8s_client: Any, namespace: str, name: str, wanted: Any) -> datetime | None:
    """The server's idle-deadline annotation once ``wanted(deadline)`` holds and nothing is in
    flight (the gateway writes activity every 0.5 s here)."""
    for _ in range(100):
        annotations = get_server(k8s_client, namespace, name)["metadata"].get("annotations") or {}
        deadline = api.parse_time(annotations.get(ANNOTATION_IDLE_DEADLINE))
        if wanted(deadline) and ANNOTATION_IN_FLIGHT not in annotations:
            return deadline
        await asyncio.sleep(0.1)
    raise AssertionError(f"the idle deadline stayed {deadline}")


async def test_a_keep_alive_zero_through_the_gateway_undoes_a_forever(
    gateway: httpx.AsyncClient, k8s_client: Any, namespace: str
) -> None:
    # A request's keep_alive -1 keeps the server up past keepAliveSeconds (5 s) up to its
    # maxKeepAliveSeconds; a later keep_alive 0 lets it go to minReplicas at once.
    create_ready_model(k8s_client, namespace, "gemma", "gemma3:270m")
    create_server(k8s_client, namespace, "kept", ["gemma"])
    await wait_listed(gateway, "gemma3:270m")
    ctx = Context(kube=Kube(k8s_client), settings=OperatorSettings())
    log = logging.getLogger("test")

    started = datetime.now(UTC)
    body = {"model": "gemma3:270m", "prompt": "", "stream": False, "keep_alive": -1}
    assert (await gateway.post("/api/generate", json=body)).status_code == 504  # no pod here
    forever = await _annotation(
        k8s_client,
        namespace,
        "kept",
        lambda d: d is not None and d > started + timedelta(minutes=30),
    )
    assert forever is not None and forever <= datetime.now(UTC) + timedelta(hours=1)
    assert get_server(k8s_client, namespace, "kept")["spec"]["replicas"] == 1
    later = datetime.now(UTC) + timedelta(minutes=30)
    tick(ctx, namespace, "kept", later, log)
    assert get_server(k8s_client, namespace, "kept")["spec"]["replicas"] == 1

    # An unload (keep_alive 0, no prompt): no pod has the model loaded, so the gateway answers
    # it itself, and records its keep_alive all the same.
    body["keep_alive"] = 0
    unloaded = await gateway.post("/api/generate", json=body)
    assert (unloaded.status_code, unloaded.json()["done_reason"]) == (200, "unload")
    now = await _annotation(
        k8s_client,
        namespace,
        "kept",
        lambda d: d is not None and d < started + timedelta(minutes=30),
    )
    assert now is not None
    # Right away, long before keepAliveSeconds: the model may go now.
    tick(ctx, namespace, "kept", datetime.now(UTC) + timedelta(seconds=1), log)
    assert get_server(k8s_client, namespace, "kept")["spec"]["replicas"] == 0

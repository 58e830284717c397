"""Keep-alive on the local cluster with a real runtime pod, in the order a user meets it: an
OpenAI-first client against a fresh pod (the model is loaded once and stays: the pod's -1 is
forever), an Ollama ``keep_alive: -1``, then ``keep_alive: 0`` letting the server go to zero
right after the request, long before its ``keepAliveSeconds`` (a request's keep_alive outliving
``keepAliveSeconds`` across resyncs is tests/cluster/operator/test_keep_alive.py).
"""

from __future__ import annotations

import re
import time

import ollama
import openai
import pytest

from devstack.poll import wait_for
from devstack.stack import Stack
from tests.e2e_local.support import deploy, ready_pod, server_pods
from tests.e2e_local.test_gateway import listed, replicas

pytestmark = pytest.mark.cluster

KEEP_ALIVE_SECONDS = 300


def test_a_requests_keep_alive_decides_the_pods_life(
    stack: Stack, gateway: str, namespace: str
) -> None:
    model = f"k{namespace}"
    served = deploy(stack, namespace, model, "ka", min_replicas=0, keep_alive=KEEP_ALIVE_SECONDS)
    wait_for(f"{served} listed by the gateway", lambda: listed(gateway, served), 30)

    # An OpenAI client first (no keep_alive): held while the pod starts, then answered; the
    # model is loaded once and stays loaded between requests.
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", timeout=240) as client:
        for _ in range(2):
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert answer.choices[0].message.content
            time.sleep(1)
    pod = ready_pod(stack, namespace, "ka")["metadata"]["name"]
    log = stack.kubectl("logs", "-n", namespace, pod).stdout
    assert "unloading" not in log
    assert len(re.findall(r"\bloaded \S+ \(n_ctx", log)) == 1, log

    with ollama.Client(host=gateway, timeout=120) as client:
        # keep_alive -1: forever on the pod, up to maxKeepAliveSeconds (3600) for the server.
        client.generate(model=model, prompt="", keep_alive=-1)
        time.sleep(3)
        assert replicas(stack, namespace, "ka") == 1
        assert len(server_pods(stack, namespace, "ka")) == 1

        # keep_alive 0 undoes it: the model may go now, and with it the server (its
        # keepAliveSeconds would have kept it five minutes).
        started = time.monotonic()
        client.generate(model=model, prompt="", keep_alive=0)
    wait_for("scale to zero", lambda: replicas(stack, namespace, "ka") == 0, 30)
    assert time.monotonic() - started < 40
    wait_for("the pod to go", lambda: not server_pods(stack, namespace, "ka"), 60)

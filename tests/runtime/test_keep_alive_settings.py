"""The server's default keep_alive as ``corral serve`` takes it (flag or environment): Ollama's
durations, -1 (what the operator gives runtime pods) meaning forever exactly as a request's
``keep_alive: -1`` does, and a clear one-line error for what is no duration.

Each case runs ``corral serve`` as its own process, so the flag and the environment are parsed
the way a user (or a pod) hands them over, and is driven with the official clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import openai
import pytest

from corral_runtime.api.info import FOREVER_RFC3339
from corral_runtime.store.layout import ModelStore
from tests.support.serveproc import serving_process

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"


def _openai_chat(base_url: str) -> None:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert answer.choices[0].message.content is not None


def _expiry(base_url: str) -> str | None:
    """The model's ``expires_at`` in /api/ps, as sent; None when it is not loaded."""
    for model in httpx.get(f"{base_url}/api/ps", timeout=10).json()["models"]:
        if model["model"] == MODEL:
            return str(model["expires_at"])
    return None


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ((), {"CORRAL_KEEP_ALIVE_SECONDS": "-1"}),
        (("--keep-alive", "-1"), {}),
        ((), {"CORRAL_KEEP_ALIVE": "-1m"}),
    ],
    ids=["operator-env", "flag", "duration-env"],
)
def test_a_negative_default_keeps_an_openai_first_model_loaded(
    model_store: ModelStore, tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    # An OpenAI client carries no keep_alive: the server's default applies, and -1 is forever.
    with serving_process(model_store.root, *args, log=tmp_path / "serve.log", env=env) as served:
        _openai_chat(served.base_url)
        time.sleep(0.5)  # an unload would be under way by now
        _openai_chat(served.base_url)
        assert _expiry(served.base_url) == FOREVER_RFC3339
        assert "unloading" not in served.log.read_text()
        assert "loaded gemma3:270m" in served.log.read_text()
        assert served.log.read_text().count("loaded gemma3:270m") == 1  # loaded once


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--keep-alive", "5m"), {}),
        ((), {"CORRAL_KEEP_ALIVE": "5m"}),
        ((), {"CORRAL_KEEP_ALIVE_SECONDS": "5m"}),
        ((), {"CORRAL_KEEP_ALIVE_SECONDS": "300"}),
    ],
    ids=["flag", "env", "env-seconds-name", "bare-seconds"],
)
def test_a_duration_default_sets_the_expiry(
    model_store: ModelStore, tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    with serving_process(model_store.root, *args, log=tmp_path / "serve.log", env=env) as served:
        _expires_in_five_minutes(served.base_url)


def _expires_in_five_minutes(base_url: str) -> None:
    """An OpenAI request (no keep_alive) leaves its model expiring 5 minutes after it ended."""
    before = time.time()
    _openai_chat(base_url)
    after = time.time()
    expiry = _expiry(base_url)
    assert expiry is not None and expiry != FOREVER_RFC3339
    at = datetime.fromisoformat(expiry).timestamp()
    assert before + 295 <= at <= after + 305, (expiry, before, after)


def test_an_openai_request_brings_back_the_default_after_a_forever(
    model_store: ModelStore, tmp_path: Path
) -> None:
    """As in Ollama, a request without keep_alive gets the server's default, not whatever the
    model's previous request asked for."""
    with serving_process(model_store.root, "--keep-alive", "5m", log=tmp_path / "s.log") as served:
        forever = {
            "model": MODEL,
            "prompt": "Hi",
            "stream": False,
            "keep_alive": -1,
            "options": {"num_predict": 4},  # sampled text may run to the context's end
        }
        answer = httpx.post(f"{served.base_url}/api/generate", json=forever, timeout=120)
        assert answer.status_code == 200, answer.text
        assert _expiry(served.base_url) == FOREVER_RFC3339
        _expires_in_five_minutes(served.base_url)


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (("--keep-alive", "soon"), {}, "soon"),
        ((), {"CORRAL_KEEP_ALIVE": "5 minutes"}, "5 minutes"),
        ((), {"CORRAL_KEEP_ALIVE_SECONDS": "nan"}, "nan"),
    ],
    ids=["flag", "env", "env-nan"],
)
def test_an_invalid_default_is_a_one_line_error(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], shown: str
) -> None:
    command = [sys.executable, "-m", "corral_runtime.cli", "serve", "--port", "0", *args]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_environment(), **env},
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "keep-alive" in lines[-1] and shown in lines[-1], done.stderr
    assert "pydantic" not in done.stderr and "Traceback" not in done.stderr
    assert "validation error" not in done.stderr


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}

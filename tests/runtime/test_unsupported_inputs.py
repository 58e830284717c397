"""What corral cannot run yet is refused, naming it, instead of being dropped: images sent to a
model with a vision projector, and LoRA adapter layers at pull, create and load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from corral_runtime.store.layout import ADAPTER_LAYER, PROJECTOR_LAYER, ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.runtime

# A one-pixel PNG: any image will do, none may be dropped in silence.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """The tiny model, and two models made from it: one with a vision projector layer, one with
    a LoRA adapter layer (as pulls of such models write them)."""
    from tests.support.gguf_corpus import encode, tiny_model

    store = ModelStore(tmp_path / "models")
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(encode(tiny_model()))
    base = store.create_model("tiny", tiny, template="{{ .Prompt }}")
    model_layer = base.manifest.layers[0]
    for name, media in (("tiny-vision", PROJECTOR_LAYER), ("tiny-lora", ADAPTER_LAYER)):
        extra = store.put_bytes(f"{name} layer".encode())
        store.compose_model(
            name,
            model_layer,
            template="{{ .Prompt }}",
            extra_layers=(type(extra)(media, extra.digest, extra.size),),
        )
    return store


@pytest.fixture
def oai(store_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=store_server.openai_url, api_key="unused") as client:
        yield client


def test_ollama_images_to_a_projector_model_are_refused(store_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="images are not supported yet") as raised:
        store_client.chat(
            model="tiny-vision",
            messages=[{"role": "user", "content": "What is this?", "images": [PIXEL]}],
            options={"num_predict": 2},
        )
    assert raised.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="images are not supported yet"):
        store_client.generate(
            model="tiny-vision", prompt="Describe", images=[PIXEL], options={"num_predict": 2}
        )
    # Nor does the model claim what it cannot do; text alone still runs on it.
    assert "vision" not in (store_client.show("tiny-vision").capabilities or [])
    assert store_client.generate(model="tiny-vision", prompt="a", options={"num_predict": 2}).done


def test_openai_image_parts_to_a_projector_model_are_refused(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="images are not supported yet"):
        oai.chat.completions.create(
            model="tiny-vision",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PIXEL}"},
                        },
                    ],
                }
            ],
            max_tokens=2,
        )


def test_a_model_with_an_adapter_is_refused_at_load(
    store_client: ollama.Client, oai: openai.OpenAI
) -> None:
    with pytest.raises(ollama.ResponseError, match="LoRA adapter layers") as raised:
        store_client.generate(model="tiny-lora", prompt="a", options={"num_predict": 2})
    assert raised.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="LoRA adapter layers"):
        oai.chat.completions.create(
            model="tiny-lora", messages=[{"role": "user", "content": "a"}], max_tokens=2
        )
    assert store_client.ps().models == []


def test_create_refuses_adapters(store_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError, match="LoRA adapter layers") as raised:
        store_client.create(model="copy-of-lora", from_="tiny-lora")
    assert raised.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="LoRA adapters are not supported yet"):
        store_client.create(
            model="with-adapter", from_="tiny", adapters={"a.gguf": "sha256:" + "0" * 64}
        )
    assert "copy-of-lora" not in {m.model for m in store_client.list().models}


def test_pull_refuses_a_model_with_an_adapter(
    store: ModelStore, tiny_registry: TestRegistry
) -> None:
    raw = json.loads(tiny_registry.add_model("library", "tiny", "lora", b"tiny-base" * 4))
    digest, size = tiny_registry.add_blob(b"an adapter")
    raw["layers"].append({"mediaType": ADAPTER_LAYER, "digest": digest, "size": size})
    tiny_registry.state.manifests[("library", "tiny", "lora")] = json.dumps(raw).encode()
    settings = settings_for(store.root, pull_allowed_hosts=["127.0.0.1"], pull_allow_insecure=True)
    with serve(settings, store) as server:
        response = httpx.post(
            server.base_url + "/api/pull",
            json={
                "model": f"{tiny_registry.host}/library/tiny:lora",
                "insecure": True,
                "stream": False,
            },
            timeout=60,
        )
    assert response.status_code == 400
    assert "LoRA adapter layers" in response.json()["error"]
    assert not any(r.path.endswith(digest) for r in tiny_registry.requests())

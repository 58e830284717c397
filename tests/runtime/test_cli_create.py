"""``corral create`` and ``corral show`` on a real store with the bundled test model: models made
from a stored model and from a GGUF file, Modelfiles refused without a trace, show's sections and
parts, its Modelfile making the same model again, and a server answering with what a created
model's SYSTEM and PARAMETERs say."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral_runtime.cli import main
from corral_runtime.store.layout import ModelStore
from corral_runtime.store.modelfile import parse_modelfile
from corral_runtime.store.refs import blob_digests
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model
from tests.runtime.conftest import serve, settings_for

pytestmark = pytest.mark.runtime

PIRATE = (
    """# a pirate, from the file itself
FROM ./gemma.gguf
SYSTEM You are a pirate. Answer in one word.
PARAMETER temperature 0
PARAMETER stop "<end_of_turn>"
PARAMETER num_predict 4
MESSAGE user Who are you?
MESSAGE assistant """
    + '"""A pirate."""'
    + """
LICENSE Apache-2.0
LICENSE \"\"\"Second line of the licence.
Third line.\"\"\"
"""
)


@pytest.fixture
def store(tmp_path: Path, test_model_path: Path) -> ModelStore:
    """A store of its own holding ``gemma3:270m``, the test GGUF linked beside it."""
    store = ModelStore(tmp_path / "models")
    ensure_test_model(store)
    (tmp_path / "gemma.gguf").symlink_to(test_model_path)
    return store


def corral(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def create(
    capsys: pytest.CaptureFixture[str], store: ModelStore, name: str, text: str
) -> tuple[int, str, str]:
    modelfile = store.root.parent / f"{name.replace(':', '_')}.Modelfile"
    modelfile.write_text(text)
    return corral(capsys, "create", name, "-f", str(modelfile), "--models", str(store.root))


def stored_files(store: ModelStore) -> tuple[list[str], dict[str, int]]:
    return sorted(name.display for name in store.names()), blob_digests(store)


def test_a_model_from_a_gguf_file_beside_the_modelfile(
    capsys: pytest.CaptureFixture[str], store: ModelStore
) -> None:
    code, out, err = create(capsys, store, "pirate", PIRATE)
    assert (code, err) == (0, ""), err
    digest = store.get(TEST_MODEL_NAME).model_digest
    assert out.splitlines() == [
        "gathering model components",
        f"copying file {digest} 100%",
        "parsing GGUF",
        f"using existing layer {digest}",
        "writing manifest",
        "success",
    ]
    model = store.get("pirate")
    assert model.model_digest == digest
    assert model.system == "You are a pirate. Answer in one word."
    assert model.params == {"temperature": 0.0, "stop": ["<end_of_turn>"], "num_predict": 4}
    assert model.messages == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A pirate."},
    ]
    assert model.license == "Apache-2.0\nSecond line of the licence.\nThird line."
    assert model.template is None  # the GGUF's own (none here): nothing was inherited


def test_a_model_from_a_stored_one_inherits_what_it_does_not_say(
    capsys: pytest.CaptureFixture[str], store: ModelStore
) -> None:
    text = "from gemma3:270m\nsystem Be brief.\nparameter top_k 10\nparameter num_ctx 1024\n"
    code, out, err = create(capsys, store, "brief:1", text)
    assert (code, err) == (0, ""), err
    assert out.splitlines()[0] == "gathering model components"
    assert out.splitlines()[-1] == "success"
    base, model = store.get(TEST_MODEL_NAME), store.get("brief:1")
    assert model.template == base.template and model.model_digest == base.model_digest
    assert model.system == "Be brief."
    assert model.params == {**base.params, "top_k": 10, "num_ctx": 1024}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FROM gemma3:270m\nADAPTER ./lora.gguf\n", "Error: line 2: adapters are not supported"),
        ("FROM ./gemma.gguf\nPARAMETER color red\n", "Error: line 2: unknown parameter 'color'"),
        ("SYSTEM no base\n", "Error: no FROM line"),
        ("FROM ./gemma.gguf\nPARAMETER top_p 5\n", "Error: invalid option 'top_p': 5.0 is out"),
        ("FROM nothere:1b\n", "Error: model 'nothere:1b' not found"),
        ("FROM ./nothere.gguf\n", "Error: FROM ./nothere.gguf: no such file"),
        ("FROM ./notgguf.bin\n", "Error: "),
        (
            "FROM ./gemma.gguf\nSYSTEM bad\xffbyte\n",
            "Error: line 2: the Modelfile is not valid UTF-8",
        ),
    ],
)
def test_a_refused_modelfile_leaves_nothing_behind(
    capsys: pytest.CaptureFixture[str], store: ModelStore, text: str, error: str
) -> None:
    (store.root.parent / "notgguf.bin").write_bytes(os.urandom(4096))  # imported, then refused
    before = stored_files(store)
    path = store.root.parent / "bad.Modelfile"
    path.write_bytes(text.encode("latin-1"))
    code, _, err = corral(capsys, "create", "bad", "-f", str(path), "--models", str(store.root))
    assert code == 1
    assert err.startswith(error) and err.count("\n") == 1, err
    assert stored_files(store) == before


def test_a_missing_modelfile_is_one_error_line(
    capsys: pytest.CaptureFixture[str], store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(store.root.parent)  # no ./Modelfile there: the default
    code, out, err = corral(capsys, "create", "x", "--models", str(store.root))
    assert (code, out, err) == (1, "", "Error: Modelfile: no such file\n")


def test_show_prints_ollamas_sections_and_each_part_alone(
    capsys: pytest.CaptureFixture[str], store: ModelStore
) -> None:
    assert create(capsys, store, "pirate", PIRATE)[0] == 0
    code, out, _ = corral(capsys, "show", "pirate", "--models", str(store.root))
    assert code == 0
    sections = [line for line in out.splitlines() if line.startswith("  ") and line[2] != " "]
    assert sections == ["  Model", "  Capabilities", "  Parameters", "  System", "  License"]
    assert "    architecture        gemma3\n" in out
    assert "    quantization        Q4_K_M\n" in out
    assert "    completion\n" in out
    assert "    num_predict    4\n" in out
    assert out.endswith("  License\n    Apache-2.0\n    Second line of the licence.\n    ...\n")

    def part(flag: str) -> str:
        code, out, err = corral(capsys, "show", "pirate", flag, "--models", str(store.root))
        assert (code, err) == (0, "")
        return out

    assert part("--system") == "You are a pirate. Answer in one word.\n"
    assert part("--license") == "Apache-2.0\nSecond line of the licence.\nThird line.\n"
    assert part("--parameters").split() == [
        "num_predict", "4", "stop", '"<end_of_turn>"', "temperature", "0"
    ]  # fmt: skip
    assert part("--template") == ""  # neither the model nor its GGUF has one
    assert part("--modelfile").startswith('# Modelfile generated by "corral show"\n')
    with pytest.raises(SystemExit) as usage:
        main(["show", "pirate", "--system", "--license", "--models", str(store.root)])
    assert usage.value.code == 2


def test_shows_modelfile_makes_the_same_model_again(
    capsys: pytest.CaptureFixture[str], store: ModelStore
) -> None:
    assert create(capsys, store, "pirate", PIRATE)[0] == 0
    _, shown, _ = corral(capsys, "show", "pirate", "--modelfile", "--models", str(store.root))
    again = parse_modelfile(shown)
    original = parse_modelfile(PIRATE)
    assert again.base == str(store.get("pirate").model_path)
    for field in ("template", "system", "parameters", "messages", "license"):
        assert getattr(again, field) == getattr(original, field), field
    code, _, err = create(capsys, store, "pirate-again", shown)
    assert (code, err) == (0, ""), err
    assert store.get("pirate-again").manifest.digest == store.get("pirate").manifest.digest


def chat(base_url: str, model: str, **options: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "stream": False,
        "options": options,
    }
    reply = httpx.post(f"{base_url}/api/chat", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


def test_a_server_answers_with_the_created_models_system_and_parameters(
    capsys: pytest.CaptureFixture[str], store: ModelStore
) -> None:
    with serve(settings_for(store.root), store) as server:
        greedy = chat(server.base_url, TEST_MODEL_NAME, temperature=0, num_predict=12)
        words = greedy["message"]["content"].split()
        assert len(words) >= 3, greedy
        stop = words[2]
        text = f"FROM {TEST_MODEL_NAME}\nSYSTEM Speak like a pirate.\nPARAMETER num_predict 3\n"
        assert create(capsys, store, "short", text)[0] == 0
        text = f'FROM {TEST_MODEL_NAME}\nPARAMETER temperature 0\nPARAMETER stop "{stop}"\n'
        assert create(capsys, store, "stopper", text)[0] == 0

        short = chat(server.base_url, "short", temperature=0)
        assert (short["eval_count"], short["done_reason"]) == (3, "length")
        # The SYSTEM layer is part of every prompt of the model (Gemma's turn format).
        assert short["prompt_eval_count"] > greedy["prompt_eval_count"]
        stopped = chat(server.base_url, "stopper", num_predict=12)
        assert stopped["done_reason"] == "stop"
        content = stopped["message"]["content"]
        assert stop not in content
        assert greedy["message"]["content"].startswith(content.rstrip())

        shown = httpx.post(f"{server.base_url}/api/show", json={"model": "short"}).json()
        assert shown["system"] == "Speak like a pirate."
        assert shown["parameters"].split()[:2] == ["num_predict", "3"]
        assert parse_modelfile(shown["modelfile"]).parameters["num_predict"] == 3

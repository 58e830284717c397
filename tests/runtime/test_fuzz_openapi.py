"""A bounded, seeded fuzzing pass over the runtime's own OpenAPI schema (``/openapi.json``).

For every JSON operation the schema lists, Hypothesis draws request bodies from the operation's
schema, mixed with hostile values (lone surrogates, NUL bytes, path-like names, huge and negative
numbers, deep nesting), and sends them to a real ``corral serve`` process over the real test
model. Every answer must be an answer: never a 5xx (a 503 with ``Retry-After`` is load shedding,
not a failure), never a hang, never a crash; and after the pass the model still answers a plain
request (nothing was wedged).

Generation is kept short by capping ``num_predict``/``max_tokens`` in drawn bodies; everything
else stays as drawn. ``/api/pull`` is left out: its sources are the network (its hostile
registry tests live beside the puller's).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import ensure_test_model
from tests.support.serveproc import ServedProcess, serving_process

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
EXAMPLES_PER_OPERATION = 30
REQUEST_TIMEOUT = 60.0
MAX_TOKENS = 4
# The operations left out, and why (see the module docstring).
SKIPPED = {("post", "/api/pull")}
# Management operations never get the real model's name: deleting or re-creating it would end
# the pass's use of it (they get drawn names, which must be answered all the same).
MANAGEMENT = {"/api/delete", "/api/copy", "/api/create"}

HOSTILE_TEXT = [
    "",
    "\ud800",
    "a\udfffb",
    "\x00",
    "../../../../etc/passwd",
    "/etc/passwd",
    "sha256:" + "0" * 64,
    "sha256-../../x",
    "x" * 5000,
    "{{ range . }}{{ end }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "\u202e\u0000\ufeff",
    "%s%n%x",
]
HOSTILE_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31,
    -(2**31) - 1,
    2**63,
    -(2**63),
    10**30,
    1e308,
    -1e308,
    0.5,
]


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(HOSTILE_NUMBERS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        text(),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text(), inner, max_size=4)
        ),
        max_leaves=12,
    )


def from_schema(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A strategy for values of a JSON Schema as FastAPI writes it (OpenAPI 3.1), mostly valid,
    with hostile leaves: the server must answer either kind with a 4xx or a success."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(components[name], components, depth)
    if depth > 5:
        return st.none()
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([from_schema(s, components, depth + 1) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, components, depth) for k in kind])
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: from_schema(v, components, depth + 1) for k, v in properties.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "array":
        items = schema.get("items", {})
        return st.lists(from_schema(items, components, depth + 1), max_size=4)
    if kind == "string":
        return text()
    if kind == "integer":
        return st.one_of(st.integers(-(2**40), 2**40), st.sampled_from(HOSTILE_NUMBERS))
    if kind == "number":
        return st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE_NUMBERS)
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values()


def bounded(body: Any, use_model: bool) -> Any:
    """Keep generation short and (mostly) aim at the model that exists."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if use_model and "model" in body:
        body["model"] = MODEL
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body and not (isinstance(body[key], int) and 0 < body[key] <= MAX_TOKENS):
            body[key] = MAX_TOKENS
    options = body.get("options")
    if isinstance(options, dict):
        options = dict(options)
        options["num_predict"] = MAX_TOKENS
        body["options"] = options
    elif "options" in body or "prompt" in body or "messages" in body:
        body["options"] = {"num_predict": MAX_TOKENS}
    if "max_tokens" not in body and "messages" in body and "options" not in body:
        body["max_tokens"] = MAX_TOKENS
    return body


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    store = ModelStore(root / "models")
    ensure_test_model(store)
    with serving_process(
        store.root,
        "--context-length",
        "512",
        "--threads",
        "2",
        "--log-level",
        "warning",
        log=root / "serve.log",
    ) as server:
        yield server


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            if body is not None and (method, path) not in SKIPPED:
                found.append((method, path, body))
    return found


def check_answer(server: ServedProcess, response: httpx.Response, sent: str) -> None:
    where = f"{response.request.method} {response.request.url.path} {sent[:300]!r}"
    assert server.alive(), f"the server died on {where}:\n{server.log_tail()}"
    if response.status_code == 503:
        assert "retry-after" in response.headers, where
    else:
        assert response.status_code < 500, f"{response.status_code} {response.text[:300]} {where}"
    # Errors never show the store's paths (a successful /api/show names the blob in its
    # modelfile, as Ollama's does).
    if response.status_code >= 400:
        assert "/blobs/" not in response.text, where
    for line in response.text.splitlines():
        if line.startswith("{") and '"error"' in line:
            assert "internal server error" not in line.lower(), f"{line} {where}"


def fuzz_operation(
    http: httpx.Client,
    server: ServedProcess,
    method: str,
    path: str,
    bodies: st.SearchStrategy[Any],
    tried: dict[str, int],
) -> None:
    """Send ``EXAMPLES_PER_OPERATION`` drawn bodies to one operation, checking each answer."""

    @seed(20261206)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies, use_model=st.booleans())
    def exchange(body: Any, use_model: bool) -> None:
        sent = json.dumps(bounded(body, use_model and path not in MANAGEMENT))
        tried[path] = tried.get(path, 0) + 1
        try:
            response = http.request(method.upper(), path, content=sent)
        except httpx.TimeoutException:
            pytest.fail(f"no answer in {REQUEST_TIMEOUT}s: {method} {path} {sent[:300]}")
        check_answer(server, response, sent)

    exchange()


def test_the_schema_is_served_and_lists_the_apis(fuzz_server: ServedProcess) -> None:
    response = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/embeddings"):
        assert path in paths


def test_no_drawn_request_gets_a_5xx_a_hang_or_a_crash(fuzz_server: ServedProcess) -> None:
    schema = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=30).json()
    components = schema.get("components", {}).get("schemas", {})
    found = operations(schema)
    assert len(found) >= 10, [p for _, p, _ in found]
    tried: dict[str, int] = {}
    with httpx.Client(base_url=fuzz_server.base_url, timeout=REQUEST_TIMEOUT) as http:
        for method, path, body_schema in found:
            bodies = st.one_of(from_schema(body_schema, components), json_values())

            fuzz_operation(http, fuzz_server, method, path, bodies, tried)
        # Nothing was wedged: the model still answers a plain request.
        reply = http.post(
            "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        )
        assert reply.status_code == 200, reply.text
        assert http.get("/readyz").status_code == 200
    assert all(count >= EXAMPLES_PER_OPERATION // 2 for count in tried.values()), tried


def test_raw_bytes_get_an_error_in_shape(fuzz_server: ServedProcess) -> None:
    """Bytes that are not JSON (or not UTF-8) on every JSON route: a 4xx in the API's shape."""
    schema = httpx.get(fuzz_server.base_url + "/openapi.json", timeout=30).json()

    @seed(20261206)
    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(raw=st.binary(max_size=256), which=st.integers(min_value=0))
    def exchange(raw: bytes, which: int) -> None:
        method, path, _ = operations(schema)[which % len(operations(schema))]
        with httpx.Client(base_url=fuzz_server.base_url, timeout=REQUEST_TIMEOUT) as http:
            response = http.request(method.upper(), path, content=raw)
        check_answer(fuzz_server, response, repr(raw))
        if 400 <= response.status_code < 500:
            error = response.json()["error"]
            assert isinstance(error, dict if path.startswith("/v1") else str), response.text

    exchange()

"""The runtime's settings: the only readers of environment variables in the runtime.

``RuntimeSettings`` is the server's (``CORRAL_*``): ``corral serve`` builds it from its flags
(which win over the environment) and passes it to ``create_app(settings)``. ``SourceSettings``
says where pulls find what a source names, ``PullJobSettings`` is what the operator's pull Job
tells ``corral pull``, ``CacheSettings`` where this user's caches live. Everything below takes
the values as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from corral_runtime.durations import DEFAULT_KEEP_ALIVE_SECONDS, parse_default_keep_alive

GpuLayers = Literal["auto"] | Annotated[int, Field(ge=0)]
# The KV cache's element types, as Ollama's OLLAMA_KV_CACHE_TYPE names them.
KvCacheType = Literal["f16", "q8_0", "q4_0"]
# The request priority classes, highest first (``engine.priority.PRIORITY_CLASSES``).
PriorityClass = Literal["interactive", "batch"]


def default_models_dir() -> Path:
    """The store used when neither ``--models`` nor ``CORRAL_MODELS`` names one (as Ollama uses
    ``~/.ollama/models``): ``corral serve`` serves it and ``corral pull`` fills it."""
    return Path.home() / ".corral" / "models"


DEFAULT_BIND_HOST = "127.0.0.1"
DEFAULT_BIND_PORT = 11434


def parse_bind_address(raw: str) -> tuple[str, int]:
    """The address ``corral serve`` binds for an ``OLLAMA_HOST`` in Ollama's forms: ``0.0.0.0``,
    ``host:port``, ``:port``, ``http://host:port``, ``[::1]:port``. A missing host is
    127.0.0.1 and a missing port 11434, the port the clients (``corral run``, ``ps``, ``stop``)
    assume for the same value, so one OLLAMA_HOST serves and reaches the same address. Raises
    ValueError for what cannot be bound: another scheme, a port that is not 0-65535."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if scheme.lower() != "http":
        raise ValueError(f"invalid address {raw!r}: corral serve speaks plain http://")
    hostport = rest.split("/", 1)[0]
    try:
        parts = urlsplit(f"http://{hostport}")
        port = parts.port
    except ValueError:
        raise ValueError(
            f"invalid address {raw!r}: expected [http://][host][:port], e.g. 0.0.0.0:11434"
        ) from None
    if hostport.endswith(":"):  # "host:" would otherwise read as no port at all
        raise ValueError(f"invalid address {raw!r}: the port is missing after ':'")
    return parts.hostname or DEFAULT_BIND_HOST, DEFAULT_BIND_PORT if port is None else port


HF_DEFAULT_ENDPOINT = "https://huggingface.co"
PVC_DEFAULT_ROOT = "/mnt/pvc"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxies_configured(environ: Mapping[str, str]) -> bool:
    """Whether proxy variables name a proxy (which only the httpx client knows how to use)."""
    return any(environ.get(name) or environ.get(name.upper()) for name in _PROXY_VARIABLES)


class SourceSettings(BaseSettings):
    """Where a pull finds what a source names (``CORRAL_HF_ENDPOINT``, ``CORRAL_PVC_ROOT``; the
    operator's pull Job and the chart set them) and whether the environment names a proxy."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    hf_endpoint: str = Field(
        default=HF_DEFAULT_ENDPOINT, description="Base URL of hf:// sources (a mirror, a test)."
    )
    pvc_root: str = Field(
        default=PVC_DEFAULT_ROOT, description="Where pvc://<claim>/ paths are mounted."
    )
    # httpx reads these itself; a pull only needs to know whether it may bypass httpx.
    http_proxy: str = Field(default="", validation_alias="http_proxy")
    https_proxy: str = Field(default="", validation_alias="https_proxy")
    all_proxy: str = Field(default="", validation_alias="all_proxy")

    @property
    def proxied(self) -> bool:
        return proxies_configured(
            {
                "http_proxy": self.http_proxy,
                "https_proxy": self.https_proxy,
                "all_proxy": self.all_proxy,
            }
        )


class PullJobSettings(BaseSettings):
    """What the operator's pull Job tells ``corral pull`` (``CORRAL_PULL_*``, set by
    corral_operator.builders.jobs): the Model's name, pinned digest, template, system prompt,
    parameters (a JSON object), messages (a JSON array of role/content objects) and license, and
    the file the result is written to (the termination log)."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_PULL_", extra="ignore")

    name: str | None = None
    digest: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: str | None = None
    messages: str | None = None
    license: str | None = None
    result_file: str | None = None


class CacheSettings(BaseSettings):
    """This user's cache directory (``XDG_CACHE_HOME``, else ``~/.cache``)."""

    xdg_cache_home: str = Field(default="", validation_alias="XDG_CACHE_HOME")

    @property
    def cache_home(self) -> Path:
        return Path(self.xdg_cache_home) if self.xdg_cache_home else Path.home() / ".cache"


class RuntimeSettings(BaseSettings):
    """Everything the inference server can be told; every field is ``CORRAL_<NAME>``."""

    # validate_by_name: fields with environment aliases (keep_alive_seconds) still take their
    # own name as an argument.
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore", validate_by_name=True)

    host: str = DEFAULT_BIND_HOST
    port: int = Field(default=DEFAULT_BIND_PORT, ge=0, le=65535)
    ollama_host: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OLLAMA_HOST", "ollama_host"),
        description=(
            "Ollama's OLLAMA_HOST ('0.0.0.0', 'host:port', ':port', 'http://host:port'): the "
            "address to bind where CORRAL_HOST / CORRAL_PORT (or their flags) do not say, so "
            "a shell set up for Ollama serves where its clients look."
        ),
    )
    models: Path | None = Field(
        default=None,
        description=(
            "Root of an Ollama-layout store; unset: ~/.corral/models, "
            "seeded with the bundled test model."
        ),
    )
    api_key: str | None = Field(
        default=None, description="When set, /api and /v1 require 'Authorization: Bearer <key>'."
    )
    admin_api_key: str | None = Field(
        default=None,
        description=(
            "When set, model management (create, pull, copy, delete, blobs) requires this key "
            "and api_key grants inference and reading only; unset: api_key grants both."
        ),
    )
    management: bool = Field(
        default=True,
        description=(
            "Serve the model-management endpoints; false answers them 403 (runtime pods: the "
            "operator owns what their store holds)."
        ),
    )
    # Empty defaults come from lambdas, not the ``list`` and ``dict`` builtins: pydantic reads
    # each factory's signature, which for a builtin means parsing its text signature (about
    # 1.5 ms of every start, before a preload's load can begin).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [],
        description=(
            "Host names served besides IP addresses, localhost and the bound host (against DNS "
            "rebinding): exact names, '.example.com' for a domain and its names, '*' for any; "
            "comma-separated in CORRAL_ALLOWED_HOSTS."
        ),
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [],
        description=(
            "Browser origins allowed besides local ones (localhost, 127.0.0.1, app://, file://, "
            "…), '*' matching any text, e.g. 'https://*.example.com'; comma-separated in "
            "CORRAL_ALLOWED_ORIGINS."
        ),
    )
    graceful_shutdown_seconds: int = Field(
        default=30,
        ge=1,
        description=(
            "On SIGTERM the server drains: new requests and /readyz answer 503 while requests "
            "in flight (streams included) finish, for up to this long; then it exits."
        ),
    )
    context_length: int = Field(
        default=4096, ge=256, description="num_ctx used when a request does not set one."
    )
    parallel: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Requests decoded at once per model (slots); unset: as many (at most 16) as hold "
            "a full context's KV cache each within a quarter of the memory budget (and of the "
            "free VRAM where the model is offloaded to a GPU)."
        ),
    )
    max_queue: int = Field(
        default=512, ge=0, description="Requests that may wait per model before 503."
    )
    queue_timeout_seconds: float | None = Field(
        default=600.0,
        gt=0,
        description="How long a request may wait for a slot before 503; unset: no limit.",
    )
    generation_timeout_seconds: float | None = Field(
        default=600.0,
        gt=0,
        description=(
            "How long one request may generate (from taking a slot) before it is stopped with "
            "an error and its slot freed; unset: no limit."
        ),
    )
    priority_aging_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A request waiting for a slot climbs one priority class per this many seconds "
            "waited, so a batch request is never starved by interactive ones."
        ),
    )
    priority_shares: dict[PriorityClass, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: {},
        description=(
            "The most of a model's slots each priority class may hold while a request of "
            'another class waits, e.g. {"batch": 0.75} (JSON in CORRAL_PRIORITY_SHARES); '
            "a class not named may take every slot."
        ),
    )
    priority_reserved_slots: int = Field(
        default=0,
        ge=0,
        description=(
            "Slots of each model beyond its parallel ones that only interactive requests take, "
            "so one finds a slot at once under any batch load while batch keeps every parallel "
            "slot; each holds a context's KV cache, planned with the model's memory."
        ),
    )
    max_loaded_models: int = Field(default=3, ge=1)
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [],
        description=(
            "Models to load at start-up, before any request asks (comma-separated in "
            "CORRAL_PRELOAD). The load overlaps the server's own start, so a cold start's "
            "first request waits for the model rather than for the imports, the bind and then "
            "the model; a preload that fails is logged and the model loads (or fails) again "
            "on its first request. A ModelServer's pods preload its first model."
        ),
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Host memory the loaded models may take together (each model's estimate: weights, "
            "KV cache for every slot, compute graph; what is offloaded to a GPU is planned "
            "against the free VRAM instead). A load beyond it evicts the least recently used "
            "idle models, waits for a busy one, or is refused when the model alone exceeds it. "
            "Unset: the container's memory limit (cgroup) less memory_reserve_bytes, else the "
            "machine's available memory at start less the reserve."
        ),
    )
    memory_reserve_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description=(
            "Memory kept for the server itself (Python, requests in flight) when the budget "
            "comes from the container's limit or the machine's available memory."
        ),
    )
    keep_alive_seconds: float = Field(
        default=DEFAULT_KEEP_ALIVE_SECONDS,
        validation_alias=AliasChoices("CORRAL_KEEP_ALIVE", "CORRAL_KEEP_ALIVE_SECONDS"),
        description=(
            "Default keep_alive of requests that set none (the OpenAI API's): seconds or an "
            "Ollama duration ('5m', '1h30m'); negative keeps models loaded forever, exactly as "
            "a request's keep_alive -1 (stored as infinity); CORRAL_KEEP_ALIVE or "
            "CORRAL_KEEP_ALIVE_SECONDS."
        ),
    )
    gpu_layers: GpuLayers = "auto"
    threads: int | None = Field(default=None, ge=1, description="Decode threads (default: cores).")
    batch_size: int = Field(default=512, ge=1)
    tensor_split: str = Field(
        default="",
        pattern=r"^([0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*)?$",
        description=(
            "How a model's layers split across the GPUs, in proportions per GPU ('1,1': evenly "
            "over two), as llama.cpp's --tensor-split; the operator sets it when one GPU is too "
            "small for a model. Unset: llama.cpp's own split (by free memory)."
        ),
    )
    flash_attention: bool | None = Field(
        default=None,
        description=(
            "Whether llama.cpp uses flash attention. Unset: llama.cpp's own choice, on "
            "wherever the devices holding the layers run it, the CPU included (as "
            "llama-server). On the CPU, with batch invariance, it shortens steps of many rows "
            "(a 16-row step of the test model on two cores: 45 ms against 51) and lengthens "
            "a lone sequence's from position 240 on (a row beside it is thrown away: 13.0 ms "
            "against 11.3 at 300 tokens). A quantized KV cache turns it on (llama.cpp needs "
            "it for the V cache)."
        ),
    )
    kv_cache_type: KvCacheType = Field(
        default="f16",
        description=(
            "Element type of the KV cache (as Ollama's OLLAMA_KV_CACHE_TYPE): f16, or q8_0 / "
            "q4_0 for about a half / a quarter of its memory at some cost in precision. A "
            "quantized cache turns flash attention on (llama.cpp needs it for the V cache)."
        ),
    )
    warm_turns: bool = Field(
        default=True,
        description=(
            "While a slot idles, evaluate its finished request's answer again as prompt chunks, "
            "so that a conversation's next turn reuses its whole history (and still answers as "
            "a fresh server); it never goes ahead of waiting work, but is wasted on one-shot "
            "requests: false turns it off."
        ),
    )
    batch_invariant: bool = Field(
        default=True,
        description=(
            "Keep each sequence's output the same alone or beside others (the same seed gives "
            "the same text at any load) by leaving out llama.cpp's CPU kernels that change with "
            "the number of rows in a batch; false: those kernels (weight repacking, tiled K-quant "
            "products), faster for some quantizations and CPUs. Process-wide, from the first "
            "model loaded."
        ),
    )
    early_engine_import: bool = Field(
        default=True,
        description=(
            "Start the engine first in `corral serve`: llama.cpp's ctypes bindings, then the "
            "preload, whose load runs while numpy and the web stack are imported and bound, so a "
            "cold start's first request waits for neither after the other; false: the web "
            "stack first, the engine in the app's start-up (to measure the difference)."
        ),
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    source_settings: SourceSettings = Field(
        default_factory=SourceSettings,
        description="Where /api/pull finds hf:// and pvc:// sources (their own variables).",
    )

    pull_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [],
        description=(
            "Hosts /api/pull may fetch from (registries, files, the CDNs they redirect to): "
            "names, 'name:port', '.example.com', networks such as '10.0.0.0/8', or '*'; "
            "comma-separated in CORRAL_PULL_ALLOWED_HOSTS. Empty: any host with a public "
            "address, never loopback, private or link-local (metadata) ones. `corral pull` is "
            "not limited."
        ),
    )
    pull_allow_insecure: bool = Field(
        default=False, description="Let /api/pull use plain HTTP (a request's 'insecure')."
    )
    pull_allow_local_paths: bool = Field(
        default=False,
        description="Let /api/pull import files from this machine (paths, file://, pvc://).",
    )

    @model_validator(mode="after")
    def _bind_ollama_host(self) -> Self:
        # Only what CORRAL_HOST / CORRAL_PORT and the flags left unsaid comes from OLLAMA_HOST,
        # and only then is it read: a server told both (as a runtime pod is) ignores an
        # OLLAMA_HOST it inherited, bad or not.
        given = self.model_fields_set
        if self.ollama_host and self.ollama_host.strip() and not {"host", "port"} <= given:
            try:
                host, port = parse_bind_address(self.ollama_host)
            except ValueError as exc:
                raise ValueError(f"ollama-host: {exc}") from None
            if "host" not in given:
                self.host = host
            if "port" not in given:
                self.port = port
        return self

    @field_validator(
        "allowed_hosts", "allowed_origins", "pull_allowed_hosts", "preload", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # "a,b" is friendlier in an environment variable than a JSON list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("keep_alive_seconds", mode="before")
    @classmethod
    def _keep_alive(cls, value: object) -> float:
        # One parser with the requests' keep_alive: "-1" is forever here as it is there.
        return parse_default_keep_alive(value)

    @field_validator("kv_cache_type", mode="before")
    @classmethod
    def _kv_cache_type_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _gpu_layers_from_text(cls, value: object) -> object:
        # Environment variables and flags arrive as text: "auto", "0", "33".
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return value

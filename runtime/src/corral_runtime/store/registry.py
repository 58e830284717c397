"""A client for the Ollama registry protocol (the Docker registry v2 subset Ollama uses).

``GET /v2/<namespace>/<model>/manifests/<tag>`` with the Docker manifest v2 Accept header, blobs at
``/v2/<namespace>/<model>/blobs/<digest>`` (usually a redirect to a CDN that serves Range
requests), and anonymous bearer tokens fetched from the realm a 401's ``WWW-Authenticate``
challenge names.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, urlencode

import httpx

from corral_runtime.store.layout import MANIFEST_MEDIA_TYPE, Manifest
from corral_runtime.store.names import ModelName
from corral_runtime.store.transfer import (
    HttpStatusError,
    InsecureSourceError,
    PullError,
    RetryPolicy,
    check_scheme,
    is_retryable_status,
    parse_retry_after,
    send,
)

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Token and error answers are a few hundred bytes.
MAX_REPLY_BYTES = 64 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ManifestNotFoundError(PullError):
    def __init__(self, name: ModelName) -> None:
        super().__init__(f"pull model manifest: file does not exist ({name.display})")
        self.name = name


def parse_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``Bearer realm=…,service=…,scope=…`` challenge, or None."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    parsed = dict(_CHALLENGE_PARAM.findall(params))
    return parsed if "realm" in parsed else None


def registry_base(host: str, insecure: bool) -> str:
    # As in Ollama: HTTPS, unless the user allowed a plain-HTTP registry.
    return f"{'http' if insecure else 'https'}://{host}"


class RegistryClient:
    """Talks to one registry host; caches the bearer token it was given."""

    def __init__(
        self,
        client: httpx.Client,
        host: str,
        *,
        insecure: bool = False,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.base = registry_base(host, insecure)
        self.insecure = insecure
        self.policy = policy or RetryPolicy()
        self._token: str | None = None
        self._challenge: dict[str, str] | None = None
        self._lock = threading.Lock()

    # -- URLs --------------------------------------------------------------------------------

    def manifest_url(self, name: ModelName) -> str:
        return f"{self.base}/v2/{quote(name.namespace)}/{quote(name.model)}/manifests/" + quote(
            name.tag
        )

    def blob_url(self, name: ModelName, digest: str) -> str:
        return f"{self.base}/v2/{quote(name.namespace)}/{quote(name.model)}/blobs/{digest}"

    # -- auth --------------------------------------------------------------------------------

    def auth_headers(self, refresh: bool = False) -> dict[str, str]:
        """Authorization for this registry; ``refresh`` fetches a new token after a 401."""
        with self._lock:
            if refresh and self._challenge is not None:
                self._token = self._fetch_token(self._challenge)
            return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _fetch_token(self, challenge: dict[str, str]) -> str:
        realm = challenge["realm"]
        check_scheme(realm, self.insecure)
        query = {k: v for k, v in challenge.items() if k in ("service", "scope")}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        response = read_bounded(
            send(self.client, "GET", url, insecure=self.insecure, stream=True),
            MAX_REPLY_BYTES,
            f"the answer of token endpoint {realm}",
        )
        if response.status_code != 200:
            raise HttpStatusError(response.status_code, realm, "token request failed")
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
        except ValueError as exc:
            raise PullError(f"token endpoint {realm} returned invalid JSON") from exc
        if not isinstance(token, str) or not token:
            raise PullError(f"token endpoint {realm} returned no token")
        return token

    def _learn_challenge(self, response: httpx.Response) -> bool:
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return False
        with self._lock:
            self._challenge = challenge
            self._token = self._fetch_token(challenge)
        return True

    # -- requests ----------------------------------------------------------------------------

    def get(
        self, url: str, accept: str | None = None, limit: int = MAX_REPLY_BYTES
    ) -> httpx.Response:
        """GET with one token refresh on 401 and backoff on 5xx/429/transport errors; the body
        is read up to ``limit`` bytes (PullError beyond: a registry cannot make us hold more)."""
        authenticated = False
        attempt = 0
        while True:
            headers = self.auth_headers()
            if accept:
                headers["Accept"] = accept
            try:
                response = read_bounded(
                    send(
                        self.client,
                        "GET",
                        url,
                        headers=headers,
                        insecure=self.insecure,
                        stream=True,
                    ),
                    limit,
                    f"the answer of {url}",
                )
            except httpx.TransportError as exc:
                if not self.insecure and "ssl" in str(exc).lower():
                    raise InsecureSourceError(
                        f"{url}: {exc}; for a plain-HTTP registry use --insecure"
                    ) from exc
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise PullError(f"{url}: {exc}") from exc
                self._sleep(attempt, None)
                continue
            if response.status_code == 401 and not authenticated:
                authenticated = True
                if self._learn_challenge(response):
                    continue
            if is_retryable_status(response.status_code):
                attempt += 1
                if attempt < self.policy.attempts:
                    self._sleep(attempt, parse_retry_after(response.headers.get("retry-after")))
                    continue
            return response

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        threading.Event().wait(self.policy.delay(attempt, retry_after))

    def fetch_manifest(self, name: ModelName) -> Manifest:
        url = self.manifest_url(name)
        response = self.get(
            url,
            accept=f"{MANIFEST_MEDIA_TYPE}, {OCI_MANIFEST_MEDIA_TYPE}",
            limit=MAX_MANIFEST_BYTES,
        )
        if response.status_code == 404:
            raise ManifestNotFoundError(name)
        if response.status_code != 200:
            raise HttpStatusError(response.status_code, url, _error_detail(response))
        raw = response.content
        try:
            manifest = Manifest.parse(raw)
        except (ValueError, RuntimeError) as exc:
            raise PullError(f"invalid manifest for {name.display}: {exc}") from exc
        return manifest


def read_bounded(response: httpx.Response, limit: int, what: str) -> httpx.Response:
    """A streamed response read into memory, refused (and closed) past ``limit`` bytes, whatever
    its Content-Length says or leaves unsaid."""
    try:
        body = bytearray()
        for block in response.iter_bytes():
            body += block
            if len(body) > limit:
                raise PullError(f"{what} is larger than {limit} bytes")
    finally:
        response.close()
    # The body is decoded already: the headers that describe its transfer no longer apply.
    kept = [
        (key, value)
        for key, value in response.headers.multi_items()
        if key.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=kept, content=bytes(body), request=response.request
    )


def _error_detail(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200]
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message", ""))
    return str(doc)[:200]

"""HTTP rules shared by the registry client and the downloader: retries, backoff, redirects.

The decisions (what to retry, how long to wait, whether a redirect may be followed and with
which headers) are small pure functions; ``send`` applies them to one request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 10
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Headers that carry credentials: never sent to another origin than the one they were meant for.
CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


class PullError(RuntimeError):
    """A pull that cannot succeed; the message is meant for the user."""


class UnsupportedModelError(PullError):
    """A model with parts corral cannot run yet (``Manifest.unsupported_parts``)."""


class InsecureSourceError(PullError):
    """A plain-HTTP URL without ``--insecure``."""


class RedirectRefusedError(PullError):
    """A redirect that would leak credentials, downgrade to plain HTTP, or loop."""


class HttpStatusError(PullError):
    def __init__(
        self, status: int, url: str, detail: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(f"{url}: HTTP {status}{': ' + detail if detail else ''}")
        self.status = status
        self.url = url
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently transient failures (5xx, 429, drops, stalls) are retried."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    stall_timeout: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): exponential, jittered."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + random.random() / 2)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (either delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def check_scheme(url: str, insecure: bool) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "https":
        return
    if scheme == "http":
        if insecure:
            return
        raise InsecureSourceError(
            f"refusing plain-HTTP URL {url}: use --insecure for a plain-HTTP registry or server"
        )
    raise PullError(f"unsupported URL scheme in {url!r}")


def redirect_target(
    current: str, location: str, headers: Mapping[str, str], insecure: bool
) -> tuple[str, dict[str, str]]:
    """Where a redirect leads and which request headers may follow it.

    Credentials go only to the origin they were meant for; a Location that itself carries
    credentials for another host is refused, and so is a downgrade to plain HTTP unless insecure.
    """
    target = urljoin(current, location)
    parts = urlsplit(target)
    check_scheme(target, insecure)
    same_origin = origin(target) == origin(current)
    if (parts.username or parts.password) and not same_origin:
        raise RedirectRefusedError(f"refusing redirect to {parts.hostname}: it carries credentials")
    if urlsplit(current).scheme == "https" and parts.scheme == "http" and not insecure:
        raise RedirectRefusedError(f"refusing redirect from HTTPS to plain HTTP ({target})")
    kept = {k: v for k, v in headers.items() if same_origin or k.lower() not in CREDENTIAL_HEADERS}
    return target, kept


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    insecure: bool = False,
    stream: bool = False,
) -> httpx.Response:
    """One request with redirects followed by ``redirect_target``'s rules.

    The returned response's ``url`` is the final URL. With ``stream`` the caller must close it.
    """
    check_scheme(url, insecure)
    current_headers = dict(headers or {})
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request(method, url, headers=current_headers)
        response = client.send(request, stream=stream, follow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
            response.close()
            url, current_headers = redirect_target(
                url, response.headers["location"], current_headers, insecure
            )
            if response.status_code == 303:
                method = "GET"
            continue
        return response
    raise RedirectRefusedError(f"too many redirects fetching {url}")

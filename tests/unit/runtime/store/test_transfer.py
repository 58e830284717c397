"""Pure decisions of the puller: redirects, retries, challenges, chunking, headers."""

from __future__ import annotations

import httpx
import pytest

from corral_runtime.settings import proxies_configured
from corral_runtime.store.download import (
    SizeMismatchError,
    _check_content_range,
    chunk_ranges,
    contiguous_done,
)
from corral_runtime.store.pull import digest_from_headers, size_from_headers
from corral_runtime.store.registry import parse_challenge, registry_base
from corral_runtime.store.transfer import (
    InsecureSourceError,
    PullError,
    RedirectRefusedError,
    RetryPolicy,
    is_retryable_status,
    parse_retry_after,
    redirect_target,
)

pytestmark = pytest.mark.unit

AUTH = {"Authorization": "Bearer t", "Range": "bytes=0-9"}


def test_redirect_to_same_origin_keeps_credentials() -> None:
    url, headers = redirect_target("https://r.example/v2/a", "/cdn/b", AUTH, insecure=False)
    assert url == "https://r.example/cdn/b"
    assert headers == AUTH


def test_redirect_to_another_host_drops_credentials() -> None:
    url, headers = redirect_target(
        "https://r.example/v2/a", "https://cdn.example/b?sig=1", AUTH, insecure=False
    )
    assert url == "https://cdn.example/b?sig=1"
    assert headers == {"Range": "bytes=0-9"}


def test_redirect_to_another_port_is_another_origin() -> None:
    _, headers = redirect_target("http://h:1/a", "http://h:2/b", AUTH, insecure=True)
    assert "Authorization" not in headers


def test_redirect_carrying_credentials_to_another_host_is_refused() -> None:
    with pytest.raises(RedirectRefusedError, match="carries credentials"):
        redirect_target("https://r.example/a", "https://u:p@evil.example/b", {}, insecure=False)


def test_redirect_downgrade_to_http_is_refused_unless_insecure() -> None:
    with pytest.raises(InsecureSourceError):
        redirect_target("https://r.example/a", "http://cdn.example/b", {}, insecure=False)
    url, _ = redirect_target("https://r.example/a", "http://cdn.example/b", {}, insecure=True)
    assert url == "http://cdn.example/b"


def test_redirect_to_other_schemes_is_refused() -> None:
    with pytest.raises(PullError):
        redirect_target("https://r.example/a", "file:///etc/passwd", {}, insecure=True)


def test_registry_base_is_https_unless_insecure() -> None:
    assert registry_base("registry.ollama.ai", False) == "https://registry.ollama.ai"
    assert registry_base("127.0.0.1:5000", True) == "http://127.0.0.1:5000"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 416])
def test_not_retryable(status: int) -> None:
    assert not is_retryable_status(status)


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    assert 0.5 <= policy.delay(1) <= 1.0
    assert 2.0 <= policy.delay(3) <= 4.0
    assert 4.0 <= policy.delay(10) <= 8.0
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=300.0) == 8.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_parse_challenge() -> None:
    header = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
    assert parse_challenge(header) == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull",
    }
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge("Bearer service=x") is None


def test_chunk_ranges_cover_the_blob_exactly() -> None:
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(0, 4) == [(0, 0)]


def test_a_proxy_in_the_environment_keeps_parts_on_the_httpx_client() -> None:
    assert not proxies_configured({})
    assert not proxies_configured({"HTTPS_PROXY": "", "NO_PROXY": "example.com"})
    assert proxies_configured({"https_proxy": "http://proxy:3128"})
    assert proxies_configured({"HTTP_PROXY": "http://proxy:3128"})
    assert proxies_configured({"ALL_PROXY": "socks5://proxy:1080"})


def test_contiguous_done_stops_at_the_first_gap() -> None:
    ranges = chunk_ranges(10, 4)
    assert contiguous_done(ranges, [0, 4, 2]) == 0
    assert contiguous_done(ranges, [3, 4, 2]) == 3
    assert contiguous_done(ranges, [4, 1, 2]) == 5
    assert contiguous_done(ranges, [4, 4, 2]) == 10


def test_content_range_checks() -> None:
    _check_content_range("bytes 4-7/10", 4, 8, 10)
    with pytest.raises(SizeMismatchError):
        _check_content_range("bytes 4-7/11", 4, 8, 10)
    with pytest.raises(PullError):
        _check_content_range("bytes 5-7/10", 4, 8, 10)
    with pytest.raises(PullError):
        _check_content_range("items 4-7/10", 4, 8, 10)


def test_advertised_digest_and_size() -> None:
    hexd = "ab" * 32
    assert digest_from_headers(httpx.Headers({"X-Linked-Etag": f'"{hexd}"'})) == f"sha256:{hexd}"
    assert digest_from_headers(httpx.Headers({"ETag": f'W/"{hexd}"'})) == f"sha256:{hexd}"
    assert digest_from_headers(httpx.Headers({"ETag": '"abc-123"'})) is None
    assert size_from_headers(httpx.Headers({"X-Linked-Size": "12", "Content-Length": "3"})) == 12
    assert size_from_headers(httpx.Headers({"Content-Length": "3"}), linked_only=True) is None

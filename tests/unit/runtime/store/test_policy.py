"""The pull policy a server applies to sources and to every URL its puller requests."""

from __future__ import annotations

import pytest

from corral_runtime.store.policy import (
    LOCAL_FILES_REFUSED,
    SourcePolicy,
    SourceRefusedError,
    host_matches,
)
from corral_runtime.store.sources import parse_source

pytestmark = pytest.mark.unit

PUBLIC = "93.184.215.14"


def resolver(table: dict[str, list[str]]) -> SourcePolicy:
    return SourcePolicy.restricted(resolver=lambda host: table.get(host, []))


class TestHostMatches:
    @pytest.mark.parametrize(
        ("pattern", "host", "port", "expected"),
        [
            ("*", "anything.example", 443, True),
            ("registry.local", "registry.local", 5000, True),
            ("registry.local:5000", "registry.local", 5000, True),
            ("registry.local:5000", "registry.local", 5001, False),
            ("Registry.Local", "registry.local", 443, True),
            (".example.com", "example.com", 443, True),
            (".example.com", "cdn.example.com", 443, True),
            (".example.com", "evilexample.com", 443, False),
            ("10.0.0.0/8", "10.2.3.4", 80, True),
            ("10.0.0.0/8", "11.2.3.4", 80, False),
            ("10.0.0.0/8", "ten.example", 80, False),
            ("[::1]:8080", "::1", 8080, True),
            ("bad:port:x", "bad", 1, False),
        ],
    )
    def test_patterns(self, pattern: str, host: str, port: int, expected: bool) -> None:
        assert host_matches(pattern, host, port) is expected


class TestCheckUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "https://127.0.0.1/x.gguf",
            "https://127.8.9.10:8443/x.gguf",
            "https://localhost/x.gguf",
            "https://sub.localhost/x.gguf",
            "https://169.254.169.254/latest/meta-data",
            "https://[fd00:ec2::254]/latest",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[fe80::1%25eth0]/x",
            "https://224.0.0.1/x",
        ],
    )
    def test_non_public_addresses_are_refused(self, url: str) -> None:
        with pytest.raises(SourceRefusedError, match="is not allowed on this server"):
            SourcePolicy.restricted(resolver=lambda host: []).check_url(url)

    def test_names_count_as_the_addresses_they_resolve_to(self) -> None:
        policy = resolver({"internal.corp": ["10.0.0.5"], "mixed.example": [PUBLIC, "127.0.0.1"]})
        for host in ("internal.corp", "mixed.example"):
            with pytest.raises(SourceRefusedError, match=host):
                policy.check_url(f"https://{host}/x.gguf")
        resolver({"public.example": [PUBLIC]}).check_url("https://public.example/x.gguf")
        # A name that does not resolve fails at the connection, not here.
        resolver({}).check_url("https://nowhere.example/x.gguf")

    def test_plain_http_only_when_allowed(self) -> None:
        with pytest.raises(SourceRefusedError, match="plain-HTTP"):
            resolver({}).check_url(f"http://{PUBLIC}/x.gguf")
        SourcePolicy.restricted(allow_insecure=True).check_url(f"http://{PUBLIC}/x.gguf")

    def test_other_schemes_are_refused(self) -> None:
        for url in ("file:///etc/passwd", "ftp://example.com/x.gguf", "gopher://x/"):
            with pytest.raises(SourceRefusedError):
                SourcePolicy().check_url(url)

    def test_configured_hosts_are_the_only_ones_and_may_be_private(self) -> None:
        policy = SourcePolicy.restricted(allowed_hosts=["127.0.0.1:5000", ".corp.example"])
        policy.check_url("https://127.0.0.1:5000/v2/")
        policy.check_url("https://registry.corp.example/v2/")
        for url in ("https://127.0.0.1:5001/v2/", f"https://{PUBLIC}/x.gguf"):
            with pytest.raises(SourceRefusedError):
                policy.check_url(url)

    def test_the_cli_policy_allows_everything(self) -> None:
        for url in ("http://127.0.0.1:1/x", "https://169.254.169.254/", "http://localhost/"):
            SourcePolicy().check_url(url)


class TestCheckSource:
    @pytest.mark.parametrize(
        "raw", ["/models/x.gguf", "./x.gguf", "file:///etc/x.gguf", "pvc://claim/x.gguf"]
    )
    def test_local_files_are_refused_without_looking(self, raw: str) -> None:
        with pytest.raises(SourceRefusedError) as caught:
            SourcePolicy.restricted().check_source(parse_source(raw), insecure=False)
        assert str(caught.value) == LOCAL_FILES_REFUSED
        allowed = SourcePolicy.restricted(allow_local_paths=True)
        allowed.check_source(parse_source(raw), insecure=False)

    def test_registries_and_urls_are_checked_as_the_urls_they_become(self) -> None:
        policy = resolver({"registry.ollama.ai": [PUBLIC], "huggingface.co": [PUBLIC]})
        policy.check_source(parse_source("llama3.2:1b"), insecure=False)
        policy.check_source(parse_source("hf://org/repo/x.gguf"), insecure=False)
        with pytest.raises(SourceRefusedError, match="plain-HTTP"):
            policy.check_source(parse_source("llama3.2:1b"), insecure=True)
        with pytest.raises(SourceRefusedError, match=r"127\.0\.0\.1"):
            policy.check_source(parse_source("127.0.0.1:5000/library/x"), insecure=False)

"""SSRF guard: address classification (examples and properties) and the resolver that enforces it.

Nothing here sends a packet: addresses are classified, and the resolver is given a fake inner resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.stages.ssrf import (
    CGNAT_V4,
    BlockedAddressError,
    GuardedResolver,
    address_refusal,
    literal_refusal,
    parse_ip,
)


def refusal(text: str, allow_loopback: bool = False) -> str | None:
    return address_refusal(ipaddress.ip_address(text), allow_loopback=allow_loopback)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local"),  # AWS/GCP/Azure instance metadata
        ("fd00:ec2::254", "private"),  # AWS IMDS over IPv6
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback via IPv4-mapped 127.0.0.1"),
        ("::ffff:169.254.169.254", "link-local via IPv4-mapped 169.254.169.254"),
        ("::ffff:10.0.0.1", "private via IPv4-mapped 10.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "link-local via NAT64 169.254.169.254"),
        ("2002:a00:1::", "private via 6to4 10.0.0.1"),
        ("64:ff9b:1::1", "private (local-use NAT64)"),
    ],
)
def test_refused_addresses_name_their_category(address: str, reason: str) -> None:
    assert refusal(address) == reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700::6810:85e5", "::ffff:8.8.8.8", "64:ff9b::808:808",
     "2002:808:808::1"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


def test_loopback_only_allowed_by_explicit_flag() -> None:
    assert refusal("127.0.0.1", allow_loopback=True) is None
    assert refusal("::1", allow_loopback=True) is None
    assert refusal("::ffff:127.0.0.1", allow_loopback=True) is None
    # The flag opens loopback and nothing else.
    for other in ("169.254.169.254", "10.0.0.1", "100.64.0.1", "224.0.0.1", "0.0.0.0", "::"):
        assert refusal(other, allow_loopback=True) is not None


def test_literal_refusal_handles_brackets_zones_and_names() -> None:
    assert literal_refusal("[::1]", allow_loopback=False) == "resolved to ::1 (loopback)"
    assert literal_refusal("fe80::1%eth0", allow_loopback=False) == "resolved to fe80::1%eth0 (link-local)"
    assert literal_refusal("169.254.169.254", allow_loopback=True) == "resolved to 169.254.169.254 (link-local)"
    assert literal_refusal("images.example.com", allow_loopback=False) is None
    assert literal_refusal("8.8.8.8", allow_loopback=False) is None
    assert parse_ip("2130706433") is None  # not an IP literal to us; the fetcher rejects it as invalid_url


# ---------------------------------------------------------------- properties against Python's own flags


def _refused_by_flags(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> bool:
    if ip.is_loopback:
        return not allow_loopback
    return (
        ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT_V4)
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or not ip.is_global
    )


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses(v=4), st.booleans())
def test_ipv4_verdict_matches_ipaddress_flags(ip: ipaddress.IPv4Address, allow_loopback: bool) -> None:
    reason = address_refusal(ip, allow_loopback=allow_loopback)
    assert (reason is not None) == _refused_by_flags(ip, allow_loopback)
    if reason is None and not ip.is_loopback:
        assert ip.is_global and not ip.is_multicast  # whatever we allow, Python agrees is public unicast


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses(v=4), st.booleans())
def test_ipv4_mapped_ipv6_gets_the_same_verdict(ip: ipaddress.IPv4Address, allow_loopback: bool) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ip))
    expected = address_refusal(ip, allow_loopback=allow_loopback) is None
    assert (address_refusal(mapped, allow_loopback=allow_loopback) is None) == expected
    assert (address_refusal(nat64, allow_loopback=allow_loopback) is None) == expected


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses(v=6), st.booleans())
def test_ipv6_never_allows_what_python_flags(ip: ipaddress.IPv6Address, allow_loopback: bool) -> None:
    reason = address_refusal(ip, allow_loopback=allow_loopback)
    embedded = ip.ipv4_mapped or ip.sixtofour
    if embedded is None and ip not in ipaddress.IPv6Network("64:ff9b::/96"):
        assert (reason is not None) == _refused_by_flags(ip, allow_loopback)
    if reason is None and embedded is not None:
        assert address_refusal(embedded, allow_loopback=allow_loopback) is None


_BAD_NETWORKS = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_BAD_NETWORKS), st.integers(min_value=0))
def test_every_address_in_a_forbidden_network_is_refused(network: str, offset: int) -> None:
    net = ipaddress.ip_network(network)
    ip = net[offset % net.num_addresses]
    assert address_refusal(ip, allow_loopback=False) is not None
    if not ip.is_loopback:
        assert address_refusal(ip, allow_loopback=True) is not None


# ---------------------------------------------------------------- the resolver


class FakeResolver(AbstractResolver):
    """Answers from a table, so that resolver tests need no DNS and send nothing."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return [
            ResolveResult(
                hostname=host, host=addr, port=port,
                family=socket.AF_INET6 if ":" in addr else socket.AF_INET, proto=0, flags=0,
            )
            for addr in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


def _resolve(guard: GuardedResolver, host: str) -> list[ResolveResult]:
    return asyncio.run(guard.resolve(host, 80, socket.AF_UNSPEC))


def test_resolver_passes_public_answers_through() -> None:
    inner = FakeResolver({"cdn.example": ["151.101.1.69", "2606:4700::6810:85e5"]})
    answers = _resolve(GuardedResolver(allow_loopback=False, inner=inner), "cdn.example")
    assert [a["host"] for a in answers] == ["151.101.1.69", "2606:4700::6810:85e5"]


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        (["169.254.169.254"], "resolved to 169.254.169.254 (link-local)"),
        (["151.101.1.69", "10.0.0.1"], "resolved to 10.0.0.1 (private)"),  # one bad answer spoils the host
        (["151.101.1.69", "::ffff:127.0.0.1"], "loopback via IPv4-mapped"),
        (["100.64.0.1"], "(CGNAT)"),
    ],
)
def test_resolver_refuses_host_if_any_answer_is_refused(answers: list[str], fragment: str) -> None:
    guard = GuardedResolver(allow_loopback=False, inner=FakeResolver({"evil.example": answers}))
    with pytest.raises(BlockedAddressError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as info:
        _resolve(guard, "evil.example")
    assert info.value.host == "evil.example"
    assert str(info.value).startswith("evil.example resolved to")


def test_resolver_checks_ip_literals_without_asking_dns() -> None:
    inner = FakeResolver({})
    guard = GuardedResolver(allow_loopback=False, inner=inner)
    with pytest.raises(BlockedAddressError, match=r"resolved to 169\.254\.169\.254 \(link-local\)"):
        _resolve(guard, "169.254.169.254")
    assert inner.calls == []


def test_resolver_allows_loopback_only_when_configured() -> None:
    table = {"localhost": ["127.0.0.1", "::1"]}
    assert len(_resolve(GuardedResolver(allow_loopback=True, inner=FakeResolver(table)), "localhost")) == 2
    with pytest.raises(BlockedAddressError, match="loopback"):
        _resolve(GuardedResolver(allow_loopback=False, inner=FakeResolver(table)), "localhost")


def test_real_default_resolver_refuses_localhost() -> None:
    """The default inner resolver (system getaddrinfo for ``localhost``: no network traffic)."""

    async def main() -> None:
        guard = GuardedResolver(allow_loopback=False)
        try:
            with pytest.raises(BlockedAddressError, match="loopback"):
                await guard.resolve("localhost", 80, socket.AF_UNSPEC)
        finally:
            await guard.close()

    asyncio.run(main())


def test_resolver_closes_its_inner_resolver() -> None:
    inner = FakeResolver({})
    asyncio.run(GuardedResolver(allow_loopback=False, inner=inner).close())
    assert inner.closed


def test_blocked_address_error_is_an_oserror_and_picklable() -> None:
    import pickle

    exc = BlockedAddressError("evil.example", "10.0.0.1", "private")
    assert isinstance(exc, OSError)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.host, copy.address, copy.reason, str(copy)) == (exc.host, exc.address, exc.reason, str(exc))

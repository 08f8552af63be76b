"""SSRF guard: which addresses a vendor image URL may make us connect to.

Every image URL comes from a vendor, so every download is a request made on a stranger's behalf. Without
a guard, ``http://169.254.169.254/latest/meta-data/`` (cloud credentials), ``http://10.0.0.5:9200/``
(an internal service) or a DNS name that resolves to one of those would be fetched from inside our
network. Two pieces close that door:

* :func:`address_refusal` decides, for one IP address, whether it is off limits and why.
* :class:`GuardedResolver` is the aiohttp resolver of the shared session. The connector connects to
  exactly the addresses the resolver returned, so checking them *here* (rather than resolving once
  beforehand and connecting later) leaves no window for DNS rebinding, and it runs again for every
  redirect hop because each hop opens its own connection.

aiohttp does not call the resolver for IP-literal hosts (``http://10.0.0.1/``); :mod:`consumer.stages.fetch`
checks those with :func:`literal_refusal` before each hop, and :class:`GuardedResolver` checks them too
when it is handed one, so neither path depends on the other.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: RFC 6598 shared address space (carrier-grade NAT). Python's ``is_private`` leaves it out, but it is
#: the provider's internal network and some clouds put metadata or internal services there.
CGNAT_V4 = ipaddress.IPv4Network("100.64.0.0/10")
#: RFC 6052 well-known NAT64 prefix: the last 32 bits are an IPv4 address a NAT64 gateway will reach.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215 local-use NAT64 prefix: translation inside an operator's own network.
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> str | None:
    """Why ``ip`` must not be connected to, or ``None`` when it is a public unicast address.

    The categories are checked most specific first so that the reason names what the address *is*
    ("link-local" for 169.254.169.254, not merely "private"). IPv6 addresses that carry an IPv4 address
    a packet would really reach (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
    ``2002:AABB:CCDD::``) are judged by that IPv4 address, because that is where the connection ends up;
    Teredo addresses must pass both their embedded client address and the IPv6 checks.
    ``allow_loopback`` exists only for the demo and tests, which serve images on 127.0.0.1.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, v4 = embedded
            reason = address_refusal(v4, allow_loopback=allow_loopback)
            if reason is not None:
                return f"{reason} via {kind} {v4}"
            if kind != "Teredo":  # the IPv4 address is the real destination, and it is public
                return None
            # Teredo: the embedded client is only one end of a tunnel; judge the IPv6 address itself too.
        if ip in NAT64_LOCAL_USE:
            return "private (local-use NAT64)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT_V4:
        return "CGNAT"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        # Documentation, benchmarking and protocol-assignment ranges that some Python versions classify
        # as neither private nor global: nothing legitimate serves vendor images from them.
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address that traffic to ``ip`` is delivered to, for the transition formats that have one."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in NAT64_WELL_KNOWN:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    return None


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is an IP literal (brackets and zone ids allowed), else ``None``."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def literal_refusal(host: str, *, allow_loopback: bool) -> str | None:
    """Refusal message for an IP-literal host (``None`` for allowed literals and for DNS names).

    aiohttp connects to IP literals without asking the resolver, so the fetcher calls this for every
    hop's host before sending anything.
    """
    ip = parse_ip(host)
    if ip is None:
        return None
    reason = address_refusal(ip, allow_loopback=allow_loopback)
    return None if reason is None else f"resolved to {ip} ({reason})"


class BlockedAddressError(OSError):
    """A host resolved to (or is) an address the SSRF guard refuses.

    It subclasses :class:`OSError` so that aiohttp treats it like any other resolution failure (wrapping
    it in ``ClientConnectorDNSError`` and never connecting); :mod:`consumer.stages.fetch` finds it in the
    exception chain and reports ``blocked_address`` instead of a retryable ``connection_error``.
    """

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        prefix = "" if parse_ip(host) is not None else f"{host} "
        super().__init__(f"{prefix}resolved to {address} ({reason})")

    def __reduce__(self) -> tuple[type[BlockedAddressError], tuple[str, str, str]]:
        return (type(self), (self.host, self.address, self.reason))


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a host if *any* of its DNS answers is a refused address.

    Refusing the whole host (rather than filtering out the bad answers) matters: a name that answers
    both a public and a private address is either misconfigured or an attack that counts on the client
    falling back to the next address, and aiohttp does fall back.
    """

    def __init__(self, *, allow_loopback: bool, inner: AbstractResolver | None = None) -> None:
        """``inner`` does the actual lookup; by default aiohttp's default resolver (needs a running loop)."""
        self._allow_loopback = allow_loopback
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver and raise :class:`BlockedAddressError` if any answer is refused."""
        literal = parse_ip(host)
        if literal is not None:
            reason = address_refusal(literal, allow_loopback=self._allow_loopback)
            if reason is not None:
                raise BlockedAddressError(host, str(literal), reason)
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise OSError(f"no addresses for {host}")
        self.check_answers(host, answers)
        return answers

    def check_answers(self, host: str, answers: Sequence[ResolveResult]) -> None:
        """Raise :class:`BlockedAddressError` for the first refused answer; the rest are then irrelevant."""
        for answer in answers:
            ip = parse_ip(answer["host"])
            if ip is None:  # a resolver must answer addresses; anything else is not connectable as-is
                raise BlockedAddressError(host, answer["host"], "not an IP address")
            reason = address_refusal(ip, allow_loopback=self._allow_loopback)
            if reason is not None:
                raise BlockedAddressError(host, str(ip), reason)

    async def close(self) -> None:
        """Release the inner resolver (aiodns channels, when aiodns is installed)."""
        await self._inner.close()

"""Who is the client? ``REMOTE_ADDR``, unless it is a proxy we trust.

With ``PERFKIT["TRUSTED_PROXIES"]`` empty (the default) the client is
``REMOTE_ADDR`` and ``X-Forwarded-For`` is ignored: anybody can write that
header, so believing it lets any client pick its own identity and escape its
limit. With a list of CIDRs, and only when the direct peer is in it, perfkit
walks ``X-Forwarded-For`` from the right (the hops nearest to us, added by our
own proxies) past every trusted hop; the first untrusted address is the
client. The header is bounded (length and hop count) and garbage stops the
walk, so a hostile header costs little and changes nothing.

IPv6 clients are grouped by prefix (``RATELIMIT_IPV6_MASK``, /64 by default:
one subscriber usually holds a whole /64, so per-address limits are trivially
evaded); IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) count as IPv4.
"""

from __future__ import annotations

import functools
import ipaddress
import logging

from django.http import HttpRequest

from django_perfkit.conf import get_settings

logger = logging.getLogger("django_perfkit.ratelimit")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest X-Forwarded-For perfkit reads, and most hops it walks.
MAX_XFF_LENGTH = 2048
MAX_HOPS = 20


@functools.cache
def _trusted(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks = []
    for proxy in proxies:
        try:
            networks.append(ipaddress.ip_network(proxy, strict=False))
        except (TypeError, ValueError):
            continue  # reported by system check perfkit.E013; never a 500
    return tuple(networks)


def _parse(value: str) -> IPAddress | None:
    text = value.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # "203.0.113.9:5555": some proxies add the port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(request: HttpRequest) -> IPAddress | None:
    """The client's address, or None when ``REMOTE_ADDR`` is missing or not an IP."""
    settings = get_settings()
    remote = request.META.get("REMOTE_ADDR") or ""
    header = (request.META.get("HTTP_X_FORWARDED_FOR") or "") if settings.trusted_proxies else ""
    return _address(str(remote), str(header), settings.trusted_proxies)


def _address(remote_addr: str, header: str, proxies: tuple[str, ...]) -> IPAddress | None:
    remote = _parse(remote_addr)
    if not proxies:
        return remote
    networks = _trusted(proxies)
    if remote is None:
        # No peer address: the app server was reached over a Unix socket, i.e.
        # from a proxy on this machine. With TRUSTED_PROXIES set, that local
        # proxy is trusted like the listed ones.
        if remote_addr:
            return None
    elif not _is_trusted(remote, networks):
        return remote
    hops = header[-MAX_XFF_LENGTH:].split(",")[-MAX_HOPS:]
    client: IPAddress | None = remote
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            break  # garbage: trust nothing further left
        client = address
        if not _is_trusted(address, networks):
            break
    return client


def client_ip(request: HttpRequest) -> str:
    """The client's rate-limit identity: its address, IPv6 grouped by prefix."""
    settings = get_settings()
    remote = request.META.get("REMOTE_ADDR") or ""
    header = (request.META.get("HTTP_X_FORWARDED_FOR") or "") if settings.trusted_proxies else ""
    return _identity(
        str(remote)[:64],
        str(header)[-MAX_XFF_LENGTH:],
        settings.trusted_proxies,
        settings.ratelimit_ipv4_mask,
        settings.ratelimit_ipv6_mask,
    )


_warned = False


def _warn_no_address(remote: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "perfkit: no client address (REMOTE_ADDR=%r): every such request shares one "
            "rate-limit bucket. Behind a proxy on a Unix socket, set "
            'PERFKIT["TRUSTED_PROXIES"] so the client is read from X-Forwarded-For.',
            remote,
        )


# Parsing addresses with ipaddress costs microseconds; the same clients come
# back again and again, so the answer is cached per (address, header, settings).
@functools.lru_cache(maxsize=4096)  # at most ~8 MiB even with 2 KiB headers
def _identity(
    remote: str, header: str, proxies: tuple[str, ...], v4_mask: int, v6_mask: int
) -> str:
    address = _address(remote, header, proxies)
    if address is None:
        _warn_no_address(remote)
        return ""
    mask = v6_mask if isinstance(address, ipaddress.IPv6Address) else v4_mask
    if mask >= address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{mask}", strict=False))

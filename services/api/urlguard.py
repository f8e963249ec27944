"""The callback URL guard: where the service may POST (server-side request forgery defence).

A callback URL must be ``http`` or ``https``, at most ``URL_MAX`` characters, without credentials
(``user:pass@``), control characters or spaces, and its host must resolve; then EVERY address it
resolves to must be public unicast — not loopback, private (RFC 1918), shared (CGNAT 100.64/10),
link-local (169.254/16 with the cloud metadata address, fe80::/10), multicast, reserved,
unspecified, documentation or benchmarking ranges, IPv6 unique-local (fc00::/7) or site-local —,
judged on the embedded IPv4 address for IPv4-mapped (``::ffff:a.b.c.d``), 6to4 and NAT64 forms.
The operator allows more with ``AUTOPAINT_CALLBACK_ALLOW``: networks or addresses
(``10.0.0.0/8,127.0.0.1``) whose addresses are accepted, and exact host names whose every address is.

The API checks a URL when a job or cohort is submitted (422 ``callback_url_not_allowed``) and the
dispatcher checks it again before each attempt (DNS may have changed), then connects to the
address it vetted, not to a second lookup's (:meth:`Target.pinned_url`: no DNS rebinding between
the check and the connection).
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from autopaint.db.models import URL_MAX
from autopaint.errors import InvalidInput
from autopaint.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = {"http": 80, "https": 443}
DNS_TIMEOUT_S = 5.0
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback-dns")


class UrlNotAllowed(InvalidInput):
    """A callback URL the guard refuses (422 at submit; a recorded error at delivery)."""

    code = "callback_url_not_allowed"


def _embedded_v4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), else None."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_public(addr: IPAddress) -> bool:
    """True for a public unicast address (see the module docstring)."""
    inner = _embedded_v4(addr)
    if inner is not None:
        return is_public(inner)
    site_local = isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local
    return (addr.is_global and not addr.is_multicast and not addr.is_reserved and not addr.is_link_local
            and not addr.is_loopback and not addr.is_unspecified and not site_local)


@dataclass(frozen=True)
class Target:
    """A vetted URL: its parts and the addresses its host resolved to (all allowed)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    def pinned_url(self, addr: IPAddress) -> str:
        """The URL with ``addr`` in place of the host name (send ``host_header`` as ``Host``)."""
        parts = urlsplit(self.url)
        literal = f"[{addr}]" if addr.version == 6 else str(addr)
        return urlunsplit((self.scheme, f"{literal}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if SCHEMES[self.scheme] == self.port else f"{name}:{self.port}"


def parse_allow(text: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """``AUTOPAINT_CALLBACK_ALLOW`` as (networks, host names); ValueError on a bad entry."""
    nets: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            if not all(c.isalnum() or c in "-._" for c in item):
                raise ValueError(f"AUTOPAINT_CALLBACK_ALLOW: {item!r} is neither a network nor a host name") from None
            hosts.add(item.lower().rstrip("."))
    return tuple(nets), frozenset(hosts)


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to (bounded by ``DNS_TIMEOUT_S``)."""
    future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=DNS_TIMEOUT_S)
    except FutureTimeout:
        raise UrlNotAllowed(f"the callback host {host[:100]!r} did not resolve within {DNS_TIMEOUT_S:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise UrlNotAllowed(f"the callback host {host[:100]!r} does not resolve ({type(exc).__name__})") from None
    addrs: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if addr not in addrs:
            addrs.append(addr)
    if not addrs:
        raise UrlNotAllowed(f"the callback host {host[:100]!r} does not resolve")
    return tuple(addrs)


@dataclass(frozen=True)
class UrlGuard:
    """The policy of one process: callbacks on or off, and what the operator allows besides public
    addresses (``from_settings``)."""

    enabled: bool = True
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlGuard:
        nets, hosts = parse_allow(settings.callback_allow)
        return cls(settings.callbacks_enabled, nets, hosts)

    def allowed(self, addr: IPAddress) -> bool:
        inner = _embedded_v4(addr)
        return is_public(addr) or any(a in n for a in (addr, inner) if a is not None
                                      for n in self.networks if a.version == n.version)

    def _parts(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of a well-formed URL; UrlNotAllowed otherwise."""
        if len(url) > URL_MAX:
            raise UrlNotAllowed(f"the callback URL is longer than {URL_MAX} characters")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
            raise UrlNotAllowed("the callback URL contains spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlNotAllowed(f"the callback URL cannot be parsed ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise UrlNotAllowed(f"callback URLs must be http or https, not {scheme[:20]!r}")
        if "@" in parts.netloc:
            raise UrlNotAllowed("the callback URL must not carry credentials (user:password@)")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UrlNotAllowed("the callback URL has no host")
        return scheme, host, port or SCHEMES[scheme]

    def check(self, url: str) -> Target:
        """The vetted :class:`Target` of ``url``; :class:`UrlNotAllowed` when callbacks are off, the
        URL is malformed, or any address of its host is not allowed."""
        if not self.enabled:
            raise UrlNotAllowed("callbacks are turned off on this server", code="callbacks_disabled")
        scheme, host, port = self._parts(url)
        addrs = _resolve(host, port)
        if host.lower() not in self.hosts:
            refused = [a for a in addrs if not self.allowed(a)]
            if refused:
                raise UrlNotAllowed(f"the callback host {host[:100]!r} resolves to {refused[0]}, which is not a "
                                    "public address (the operator may allow it: AUTOPAINT_CALLBACK_ALLOW)")
        return Target(url, scheme, host, port, addrs)

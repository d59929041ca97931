"""Webhook egress policy: job webhooks may only reach public addresses unless a deployment allows private ones.

A webhook URL is chosen by the API caller, and the worker POSTs to it from inside the deployment: without a
policy that is a server-side request forgery (SSRF) channel to loopback services (Redis, Triton's control API),
the cloud metadata endpoint (169.254.169.254) and the private network. By default:

- the gateway refuses, at submission (400 `webhook_url_not_allowed`), a URL whose host is `localhost` (or
  `*.localhost`) or an IP literal in a loopback, private, link-local, carrier-grade NAT, multicast, reserved or
  unspecified range (IPv4-mapped IPv6 included);
- the worker re-checks IP literals at delivery and connects through `PublicOnlyResolver`, which drops every
  private address a host name resolves to (a name pointing at 10.0.0.5 — or re-bound to it after submission —
  fails to connect instead of reaching it). Redirects are never followed (`jobs.webhook`).

`jobs_webhook_allow_private` (gateway) and `webhook_allow_private` (worker) turn the checks off for deployments
whose webhook receivers live on a private network (and for tests, whose receiver is on loopback).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses a webhook must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or address in _CGNAT)


def refused_target(url: str) -> str | None:
    """Why `url` may not be a webhook target without resolving it (None when its host may be public)."""
    host = (urlparse(url).hostname or "").rstrip(".").lower()
    if not host:
        return "the URL has no host"
    if host == "localhost" or host.endswith(".localhost"):
        return f"'{host}' is this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: checked when the worker resolves it
    if forbidden_address(address):
        return f"{address} is a loopback, private, link-local or reserved address"
    return None


class PublicOnlyResolver(AbstractResolver):
    """aiohttp resolver that returns only public addresses (OSError when a name has none)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        """The public addresses of `host`."""
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if not forbidden_address(ipaddress.ip_address(r["host"].split("%")[0]))]
        if not public:
            raise OSError(f"webhook host {host} resolves only to private or reserved addresses")
        return public

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()

"""Webhook egress policy, the one definition both the gateway (at submission) and the worker (at delivery) apply.

A webhook URL is chosen by the API caller, and the worker POSTs to it from inside the deployment: without a
policy that is a server-side request forgery (SSRF) channel to loopback services (Redis, Triton's control API),
the cloud metadata endpoint (169.254.169.254) and the private network. The policy (`WebhookPolicy`):

- the URL is absolute `http` or `https` with a host (always);
- by default, its host is not `localhost` (or `*.localhost`) nor an IP literal in a loopback, private,
  link-local, carrier-grade NAT, multicast, reserved or unspecified range (IPv4-mapped IPv6 included): the
  gateway refuses such a URL at submission (400 `webhook_url_not_allowed`, naming the setting below), the worker
  re-checks it at delivery and connects through `PublicOnlyResolver`, which drops every private address a host
  name resolves to (a name pointing at 10.0.0.5 — or re-bound to it after submission — fails to connect).
  Redirects are never followed (`jobs.webhook`). There is no allow-list: it is all public addresses, or all.

One setting, read by both processes, turns the address check off for deployments whose receivers live on a
private network (and for local use): `TRITONSTACK_WEBHOOK_ALLOW_PRIVATE=true` (`ALLOW_PRIVATE_ENV`). The
per-process names it replaces still work as aliases, read by both processes too; the first set in
`ALLOW_PRIVATE_ENV_NAMES` order wins.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

_CGNAT = ipaddress.ip_network("100.64.0.0/10")

# the one setting operators set for the whole stack, then the older per-process names (aliases)
ALLOW_PRIVATE_ENV = "TRITONSTACK_WEBHOOK_ALLOW_PRIVATE"
ALLOW_PRIVATE_ENV_NAMES = (ALLOW_PRIVATE_ENV, "TRITONSTACK_GATEWAY_JOBS_WEBHOOK_ALLOW_PRIVATE",
                           "TRITONSTACK_WORKER_WEBHOOK_ALLOW_PRIVATE")
ALLOW_PRIVATE_HINT = (f"webhook receivers on loopback or private networks need {ALLOW_PRIVATE_ENV}=true "
                      "(read by the gateway and the worker)")
SCHEMES = ("http", "https")


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses a webhook must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or address in _CGNAT)


def malformed(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL with a host (None when it is)."""
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES or not parsed.hostname:
        return "'url' must be an absolute http(s) URL"
    return None


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


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where webhooks may go; `allow_private` is the `TRITONSTACK_WEBHOOK_ALLOW_PRIVATE` setting."""

    allow_private: bool = False

    def refusal(self, url: str) -> str | None:
        """Why `url` may not be a webhook target, naming the setting when it would allow it (None: allowed).

        Host names pass here; without `allow_private` the worker's `PublicOnlyResolver` checks what they resolve to.
        """
        if (problem := malformed(url)) is not None:
            return problem
        if self.allow_private or (refused := refused_target(url)) is None:
            return None
        return f"webhook URL not allowed: {refused}; {ALLOW_PRIVATE_HINT}"


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
            raise OSError(f"webhook host {host} resolves only to private or reserved addresses; "
                          f"{ALLOW_PRIVATE_HINT}")
        return public

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()

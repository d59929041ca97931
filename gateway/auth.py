"""API keys: `Authorization: Bearer <key>`, configured only as sha256 digests, compared in constant time.

The presented key is hashed and compared with `hmac.compare_digest` against every configured digest (no early
exit, so timing reveals nothing about which or how many keys exist). Keys are never logged; the key's *name*
is what appears in logs, metrics and rate-limit identities. With `auth_disabled=True` (explicit, warned about
at start) every caller is an anonymous principal with all scopes, rate-limited per client IP; a valid key still
selects its own identity and limits.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.config import ApiKeyConfig, GatewaySettings
from gateway.errors import AuthenticationError, PermissionDeniedError

ADMIN_SCOPE = "admin"
ALL_SCOPES = frozenset({ADMIN_SCOPE})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a configured key, or an anonymous client identified by IP."""

    name: str
    identity: str  # rate-limit identity: "key:<name>" or "ip:<address>"
    scopes: frozenset[str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def anonymous(self) -> bool:
        """True when no configured key identified the caller."""
        return self.identity.startswith("ip:")

    def require(self, scope: str) -> None:
        """Raise PermissionDeniedError unless the principal holds `scope`."""
        if scope not in self.scopes:
            raise PermissionDeniedError(f"This API key lacks the '{scope}' scope")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


class Authenticator:
    """Resolves the Authorization header of a request to a `Principal`."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._keys = tuple(settings.api_keys)
        self._disabled = settings.auth_disabled

    def _match(self, token: str) -> ApiKeyConfig | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return found

    def authenticate(self, authorization: str | None, client_ip: str) -> Principal:
        """The caller's principal; AuthenticationError (401) for a missing or unknown key when auth is on."""
        token = bearer_token(authorization)
        key = self._match(token) if token else None
        if key is not None:
            return Principal(
                name=key.name,
                identity=f"key:{key.name}",
                scopes=ALL_SCOPES | key.scopes if self._disabled else key.scopes,
                requests_per_minute=key.requests_per_minute,
                tokens_per_minute=key.tokens_per_minute,
            )
        if self._disabled:
            return Principal(name="anonymous", identity=f"ip:{client_ip}", scopes=ALL_SCOPES)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'", headers={"www-authenticate": "Bearer"}
            )
        raise AuthenticationError("Incorrect API key provided", headers={"www-authenticate": "Bearer"})

"""API keys with two scopes: ``read`` (every GET) and ``operator`` (also commands and SQL).

Keys come from configuration (``HASHPLANE_API_KEY`` is an operator key, ``HASHPLANE_API_KEYS``
maps more keys to scopes).  A request carries its key as ``Authorization: Bearer <key>`` (what
Prometheus sends) or ``X-API-Key: <key>``.  No key: 401; a key without the scope: 403.  Keys
are compared in constant time and never logged; a key is named in commands and logs by a short
hash (``key-1a2b3c4d``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException, Request

Scope = Literal["read", "operator"]
GRANTS: dict[str, frozenset[str]] = {"read": frozenset({"read"}),
                                     "operator": frozenset({"read", "operator"})}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's short name and its scope."""

    name: str
    scope: str


def key_name(key: str) -> str:
    """A key's printable identity (not the key)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def generate_key() -> str:
    """A new random key (for the demo when none is configured)."""
    return "hp_" + secrets.token_urlsafe(24)


class KeyRing:
    """The configured keys and their scopes."""

    def __init__(self, keys: Mapping[str, str]):
        bad = {v for v in keys.values() if v not in GRANTS}
        if bad:
            raise ValueError(f"unknown API key scope(s) {sorted(bad)}; use read or operator")
        self._keys = dict(keys)

    @classmethod
    def from_settings(cls, api_key: str, api_keys: Mapping[str, str]) -> KeyRing:
        """Keys from Settings: ``api_key`` is an operator key."""
        return cls({**api_keys, **({api_key: "operator"} if api_key else {})})

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None (constant time per configured key)."""
        found: Principal | None = None
        for k, scope in self._keys.items():
            if hmac.compare_digest(k.encode(), key.encode()):
                found = Principal(key_name(k), scope)
        return found


def presented_key(request: Request) -> str:
    """The key a request carries, or ''."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def require(ring: KeyRing, scope: Scope) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency admitting keys whose scope grants ``scope``."""

    async def dependency(request: Request) -> Principal:
        key = presented_key(request)
        if not key:
            raise HTTPException(401, "API key required: Authorization: Bearer <key> "
                                     "or X-API-Key", headers={"WWW-Authenticate": "Bearer"})
        principal = ring.lookup(key)
        if principal is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if scope not in GRANTS[principal.scope]:
            raise HTTPException(403, f"this key has scope {principal.scope!r}; "
                                     f"{scope!r} is needed")
        return principal

    return dependency

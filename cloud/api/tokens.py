"""Bearer API tokens: created by `gridtokenx cloud tokens create`, stored as SHA-256 only.

A token is `gtx_` + 32 random bytes (base32, no padding). Being high-entropy, a plain SHA-256 of
it is a sufficient verifier (no salt or slow hash is needed; they protect guessable secrets).
Scopes: `admin` may do everything, `read` may read and subscribe, `submit` may only post
readings. Each API process caches validated tokens (`TokenCache`, 60 s); a revocation, a new
expiry or scope fires `NOTIFY gridtokenx_tokens` (migration 040), on which every process drops its
cache, and expiry is checked on every request, so either takes effect at once everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

Scope = Literal["admin", "read", "submit"]
SCOPES: tuple[Scope, ...] = ("admin", "read", "submit")
PREFIX = "gtx_"

#: Which token scopes satisfy a route's required scope.
GRANTS: dict[Scope, frozenset[str]] = {
    "admin": frozenset({"admin"}),
    "read": frozenset({"admin", "read"}),
    "submit": frozenset({"admin", "submit"}),
}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(self.expires_at.tzinfo):
            return "expired"
        return "active"


class TokenRefused(Exception):
    """Why a presented token is not valid: unknown, expired or revoked (one sentence)."""


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return PREFIX + base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()


_COLS = "id, name, scope, prefix, created_at, expires_at, revoked_at, last_used_at"


def _info(r: asyncpg.Record) -> TokenInfo:
    return TokenInfo(r["id"], r["name"], r["scope"], r["prefix"], r["created_at"], r["expires_at"],
                     r["revoked_at"], r["last_used_at"])


async def create(conn: asyncpg.Connection | asyncpg.Pool, *, name: str, scope: Scope,
                 expires_at: datetime | None) -> tuple[str, TokenInfo]:
    """A new token; returns (secret, info). The secret is not stored and cannot be shown again."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    secret = new_secret()
    row = await conn.fetchrow(
        f"INSERT INTO api_tokens (name, scope, token_sha256, prefix, expires_at) VALUES ($1, $2, $3, $4, $5)"
        f" RETURNING {_COLS}", name, scope, digest(secret), secret[:10], expires_at)
    assert row is not None
    return secret, _info(row)


async def list_tokens(conn: asyncpg.Connection | asyncpg.Pool) -> list[TokenInfo]:
    return [_info(r) for r in await conn.fetch(f"SELECT {_COLS} FROM api_tokens ORDER BY id")]


async def revoke(conn: asyncpg.Connection | asyncpg.Pool, token_id: int) -> TokenInfo | None:
    row = await conn.fetchrow(
        f"UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_COLS}",
        token_id)
    return None if row is None else _info(row)


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> TokenInfo:
    """The token's record if it is valid now; raises TokenRefused otherwise."""
    row = await conn.fetchrow(f"SELECT {_COLS} FROM api_tokens WHERE token_sha256 = $1", digest(secret))
    if row is None:
        raise TokenRefused("unknown API token")
    info = _info(row)
    if info.state != "active":
        raise TokenRefused(f"API token {info.id} ({info.name}) is {info.state}")
    if info.last_used_at is None or (datetime.now(info.created_at.tzinfo) - info.last_used_at).total_seconds() > 10:
        await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", info.id)
    return info


class TokenCache:
    """Validated tokens by digest, for `ttl` seconds; `clear` on any token change notification."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, TokenInfo]] = {}

    def clear(self, *_: object) -> None:
        self._entries.clear()

    async def authenticate(self, conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> TokenInfo:
        key = digest(secret)
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            info = hit[1]
            if info.state != "active":
                self._entries.pop(key, None)
                raise TokenRefused(f"API token {info.id} ({info.name}) is {info.state}")
            return info
        info = await authenticate(conn, secret)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), info)
        return info

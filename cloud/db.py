"""PostgreSQL plumbing: connection pools and the numbered-SQL migration runner.

Migrations are `migrations/NNN_name.sql`, applied in order, each in its own transaction, under a
session advisory lock so that several processes starting at once apply each file exactly once.
Applied files are recorded in `schema_migrations` with their checksum; a changed file is an error.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cloud.errors import CloudError
from runtime import assets

log = logging.getLogger(__name__)

#: migrations/ of the checkout, or its copy in the installed wheel (runtime/assets.py).
MIGRATIONS_DIR = assets.locate("migrations")
_LOCK_KEY = 0x6774786D  # 'gtxm'


class MigrationError(CloudError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("[0-9][0-9][0-9]_*.sql")):
        found.append(Migration(int(path.name[:3]), path.stem, path.read_text()))
    if not found:
        raise MigrationError(f"no migration files (NNN_name.sql) in {directory}: this installation is incomplete; "
                             "reinstall gridtokenx-edge (the wheel ships them) or run from a full checkout")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return found


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied now (empty when up to date)."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            done = {r["version"]: r for r in rows}
            for m in discover(directory):
                if m.version in done:
                    if done[m.version]["checksum"] != m.checksum:
                        raise MigrationError(
                            f"migration {m.name} changed after it was applied; add a new migration instead")
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version, m.name, m.checksum)
                log.info("applied migration %s", m.name)
                applied_now.append(m.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials as `dsn`, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def create_scratch_database(admin_dsn: str, prefix: str) -> tuple[str, str]:
    """Create an empty database named `prefix` + random suffix; returns (name, its DSN).

    Tests, benchmarks and the demo each get their own database and drop it afterwards
    (`drop_database`), so they never touch an operator's data.
    """
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()

"""Session fixtures: real Mosquitto brokers from broker-config/, a fresh real PostgreSQL database per test.

Factories close what they open. Helpers to wait for a condition with a deadline live in
`tests/helpers.py`; nothing here sleeps blindly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gridtokenx.brokers import Mosquitto, Role

ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Fixed service users; per-test meters/gateways are added with `Mosquitto.add_users`.
EDGE_USERS = ("edge-agent", "edge-inspector")
CLOUD_USERS = ("cloud-consumer",)


def _dsn_with_db(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


BrokerFactory = Callable[..., Mosquitto]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start a real Mosquitto with broker-config/{role}; users maps username → password."""
    started: list[Mosquitto] = []

    def make(role: Role, users: dict[str, str] | None = None, **kwargs: object) -> Mosquitto:
        base = dict.fromkeys(EDGE_USERS if role == "edge" else CLOUD_USERS)
        all_users = {u: secrets.token_urlsafe(12) for u in base} | (users or {})
        broker = Mosquitto(role=role, workdir=tmp_path / f"{role}-broker-{len(started)}", users=all_users,
                           **kwargs)  # type: ignore[arg-type]
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def edge_broker(broker_factory: BrokerFactory) -> Mosquitto:
    return broker_factory("edge")


@pytest.fixture
def cloud_broker(broker_factory: BrokerFactory) -> Mosquitto:
    return broker_factory("cloud")


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (created and dropped here)."""
    import asyncpg

    name = f"gtx_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_DSN} is not usable ({exc}); run ./scripts/test to set it up")
    try:
        yield _dsn_with_db(ADMIN_DSN, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

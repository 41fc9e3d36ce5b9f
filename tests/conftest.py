"""Session fixtures: real Mosquitto brokers from broker-config/, a fresh real PostgreSQL database per test.

Factories close what they open. Helpers to wait for a condition with a deadline live in
`tests/helpers.py`; nothing here sleeps blindly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from cloud.db import create_scratch_database, drop_database
from gridtokenx.harness.brokers import Mosquitto, Role

# Property tests draw the same examples on every run (a failure seen once is seen again, and CI never
# goes red on a draw nobody can reproduce); `--hypothesis-seed` still explores when asked.
hypothesis_settings.register_profile("gridtokenx", derandomize=True)
hypothesis_settings.load_profile("gridtokenx")

ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Fixed service users; per-test meters/gateways are added with `Mosquitto.add_users`.
EDGE_USERS = ("edge-agent", "edge-inspector")
CLOUD_USERS = ("cloud-consumer",)


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

    try:
        name, dsn = asyncio.run(create_scratch_database(ADMIN_DSN, "gtx_test_"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {ADMIN_DSN} is not usable ({exc}); run ./scripts/test to set it up")
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(ADMIN_DSN, name))

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud import db
from gridtokenx.harness.brokers import Mosquitto
from tests.cloud.ingest.support import ConsumerProcess

GATEWAY = "gw1"


@pytest.fixture
def migrated_db(database_url: str) -> str:
    asyncio.run(db.migrate(database_url))
    return database_url


@pytest.fixture
def gateway_password() -> str:
    return secrets.token_urlsafe(12)


@pytest.fixture
def cloud(broker_factory: Callable[..., Mosquitto], gateway_password: str) -> Mosquitto:
    return broker_factory("cloud", users={GATEWAY: gateway_password})


ConsumerFactory = Callable[..., ConsumerProcess]


@pytest.fixture
def consumers(migrated_db: str, cloud: Mosquitto, tmp_path: Path) -> Iterator[ConsumerFactory]:
    started: list[ConsumerProcess] = []

    def start(client_id: str = "cloud-consumer-1", *, env: dict[str, str] | None = None,
              ready: bool = True, crash_after_commit: int | None = None) -> ConsumerProcess:
        proc = ConsumerProcess(dsn=migrated_db, broker_url=cloud.url_for("cloud-consumer"), client_id=client_id,
                               log_dir=tmp_path, env=env, crash_after_commit=crash_after_commit)
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.close()

"""`gridtokenx cloud doctor` against real PostgreSQL, two real Mosquitto brokers and localnet: healthy,
everything passes; then each check is broken on its own and only that check fails."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import asyncpg
import pytest
from click.testing import CliRunner

from cloud.chain.factory import open_backend
from cloud.chain.identity import MINT_FILE
from cloud.db import migrate
from cloud.doctor import FAIL, OK, Check, DoctorOptions, doctor, run_checks
from cloud.settings import ChainSettings, CloudSettings
from gridtokenx.harness.brokers import Mosquitto
from protocol import topics
from runtime.config import BrokerURL
from tests.cloud.chain.conftest import LocalnetFactory
from tests.cloud.minter.conftest import add_fleet
from tests.conftest import BrokerFactory

GATEWAY = "gw-doctor"

Env = tuple[CloudSettings, DoctorOptions, Mosquitto]


@pytest.fixture
def healthy(database_url: str, tmp_path: Path, localnet_factory: LocalnetFactory,
            broker_factory: BrokerFactory) -> Env:
    cloud = broker_factory("cloud", users={GATEWAY: "gw-secret"})
    edge = broker_factory("edge")
    url = localnet_factory()
    settings = CloudSettings(database_url=database_url,
                             broker_url=BrokerURL.parse(cloud.url_for("cloud-consumer")),
                             chain=ChainSettings(backend="rpc", rpc_url=url, state_dir=tmp_path / "chain"))

    async def prepare() -> None:
        await migrate(database_url)
        await (await open_backend(settings)).close()  # creates the mint; localnet funds the authority

    asyncio.run(prepare())
    return settings, DoctorOptions(edge_broker_url=BrokerURL.parse(edge.url_for("edge-agent")),
                                   listen_secs=0.3), cloud


def _failed(checks: list[Check]) -> set[str]:
    return {c.name for c in checks if c.status == FAIL}


def test_healthy_stack_passes_every_check_and_the_command_exits_0(healthy: Env) -> None:
    settings, options, _ = healthy
    checks = asyncio.run(run_checks(settings, options))
    assert _failed(checks) == set(), [c.line() for c in checks]
    assert {c.name for c in checks if c.status == OK} >= {"database", "migrations", "cloud broker", "edge broker",
                                                          "rpc", "mint", "fee payer", "minter alive", "retry queue"}
    env = {"DATABASE_URL": settings.database_url, "GRIDTOKENX_CLOUD_BROKER_URL": _url(settings.broker_url),
           "GRIDTOKENX_CHAIN_BACKEND": "rpc", "SOLANA_RPC_URL": settings.chain.rpc_url,
           "GRIDTOKENX_CHAIN_STATE_DIR": str(settings.chain.state_dir)}
    result = CliRunner().invoke(doctor, ["--json", "--listen-secs", "0.2"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True
    broken = CliRunner().invoke(doctor, ["--listen-secs", "0.2"], env=env | {"SOLANA_RPC_URL": "http://127.0.0.1:9"})
    assert broken.exit_code == 1
    assert "FAIL  rpc" in broken.output and "→ check SOLANA_RPC_URL" in broken.output


def _url(url: BrokerURL) -> str:
    return f"mqtt://{url.username}:{url.password}@{url.host}:{url.port}"


async def _sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _break_database(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    return dataclasses.replace(s, database_url=s.database_url.rsplit("/", 1)[0] + "/gtx_no_such_db"), o


def _break_migrations(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    asyncio.run(_sql(s.database_url, "DELETE FROM schema_migrations WHERE version = 50"))
    return s, o


def _break_cloud_broker(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    return dataclasses.replace(s, broker_url=dataclasses.replace(s.broker_url, password="wrong")), o


def _break_edge_broker(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    assert o.edge_broker_url is not None
    return s, dataclasses.replace(o, edge_broker_url=dataclasses.replace(o.edge_broker_url, password="wrong"))


def _break_rpc(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    return dataclasses.replace(s, chain=dataclasses.replace(s.chain, rpc_url="http://127.0.0.1:9")), o


def _break_mint(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    path = s.chain.state_dir / MINT_FILE
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc | {"decimals": 6}))  # the record no longer matches the chain
    return dataclasses.replace(s, tokenization=dataclasses.replace(s.tokenization, decimals=6)), o


def _break_fee_payer(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    return dataclasses.replace(s, chain=dataclasses.replace(s.chain, fee_payer_min_batches=10**6)), o


def _break_minter_alive(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    async def stale_backlog() -> None:
        await add_fleet(s.database_url, meters=2, readings_per_meter=2, seed=41)
        await _sql(s.database_url, "UPDATE meter_readings SET submitted_at = now() - interval '1 hour'")

    asyncio.run(stale_backlog())
    return s, o


def _break_retry_queue(s: CloudSettings, o: DoctorOptions, _b: Mosquitto) -> tuple[CloudSettings, DoctorOptions]:
    async def dead_letter() -> None:
        fleet = await add_fleet(s.database_url, meters=1, readings_per_meter=1, seed=43)
        await _sql(s.database_url, "INSERT INTO minting_retry_queue (reading_id, attempts, error_message,"
                                   f" dead_lettered) VALUES ({fleet.reading_ids[0]}, 10, 'InstructionError', TRUE)")

    asyncio.run(dead_letter())
    return s, o


BREAKERS: dict[str, Callable[[CloudSettings, DoctorOptions, Mosquitto], tuple[CloudSettings, DoctorOptions]]] = {
    "database": _break_database, "migrations": _break_migrations, "cloud broker": _break_cloud_broker,
    "edge broker": _break_edge_broker, "rpc": _break_rpc, "mint": _break_mint, "fee payer": _break_fee_payer,
    "minter alive": _break_minter_alive, "retry queue": _break_retry_queue,
}


@pytest.mark.parametrize("check", sorted(BREAKERS))
def test_each_check_fails_on_its_own(healthy: Env, check: str) -> None:
    settings, options = BREAKERS[check](*healthy)
    checks = asyncio.run(run_checks(settings, options))
    assert _failed(checks) == {check}, [c.line() for c in checks]
    (failed,) = [c for c in checks if c.status == FAIL]
    assert failed.fix, "a failed check says what to do"


def test_shared_subscription_fails_when_batches_arrive_but_nothing_is_stored(healthy: Env) -> None:
    """Batches are published on the cloud broker while no ingest consumes them: the doctor sees traffic on
    the topic and no recent reading in the database."""
    settings, options, cloud = healthy
    options = dataclasses.replace(options, listen_secs=3.0)

    async def scenario() -> list[Check]:
        stop = asyncio.Event()

        async def publish() -> None:
            async with aiomqtt.Client(cloud.host, cloud.port, username=GATEWAY, password="gw-secret") as client:
                while not stop.is_set():
                    await client.publish(topics.batches(GATEWAY), b"\x00probe", qos=1)
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(publish())
        try:
            return await run_checks(settings, options)
        finally:
            stop.set()
            await task

    checks = asyncio.run(scenario())
    assert _failed(checks) == {"shared subscription"}, [c.line() for c in checks]



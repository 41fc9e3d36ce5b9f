"""Operating the consumer: bad envelopes, meters registered while running, SIGTERM drain, races."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from cloud.ingest.commit import decide_and_write
from cloud.ingest.pipeline import classify, parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import StaleDecision, write_plan
from cloud.settings import TokenizationSettings
from gridtokenx.harness.brokers import Mosquitto, free_port, generate_dev_certs
from protocol import topics
from protocol.reasons import Reason
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import ConsumerProcess, Gateway, Meter, query, register
from tests.cloud.ingest.test_scaleout import fleet_batches
from tests.conftest import BrokerFactory
from tests.helpers import async_wait_for, wait_for


def test_bad_envelope_is_counted_and_a_meter_added_while_running_is_found(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    consumer = consumers()

    async def garbage() -> None:
        async with aiomqtt.Client("127.0.0.1", cloud.port, username=GATEWAY, password=gateway_password) as c:
            await c.publish(topics.batches(GATEWAY), b'{"not": "a batch"}', qos=1)
            await c.publish(topics.batches(GATEWAY), b"\xff\xfe", qos=1)
    asyncio.run(garbage())
    wait_for(lambda: consumer.metric("gridtokenx_cloud_bad_envelopes_total") == 2, timeout=10,
             message="two bad envelopes counted")

    late = Meter.make("late-1")
    asyncio.run(register(migrated_db, [late]))  # after the consumer loaded its registry
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    acks = asyncio.run(gw.deliver([gw.batch("late", [late.item(1, 10, 10)])]))
    assert acks["late"].results[0].status == "accepted"
    assert consumer.terminate() == 0


def test_sigterm_drains_every_committed_batch_is_acked(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    meters = [Meter.make(f"d-{i}") for i in range(20)]
    asyncio.run(register(migrated_db, meters))
    consumer = consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    batches = fleet_batches(gw, meters, readings_each=40, batch_size=20, prefix="drain")  # 40 batches

    def acked_keys() -> set[tuple[str, int]]:
        return {(r.meter_id, r.seq) for ack in gw.acks.values() for r in ack.results if r.status == "accepted"}

    async def committed_keys() -> set[tuple[str, int]]:
        return {(r["meter_id"], r["seq"]) for r in await query(migrated_db, "SELECT meter_id, seq FROM meter_readings")}

    async def deliver_and_stop() -> None:
        acked = asyncio.Event()
        delivery = asyncio.create_task(gw.deliver(batches, resend_after=30, timeout=60, on_ack=acked))
        await asyncio.wait_for(acked.wait(), 20)
        assert await asyncio.to_thread(consumer.terminate) == 0
        committed = await committed_keys()
        assert committed, "at least the first batch was committed"

        # Graceful stop: every committed batch was acked before exit (only a crash leaves a commit
        # without its ack). The acks may still be on their way to the gateway: wait for them.
        async def all_acked() -> bool:
            return acked_keys() == committed
        await async_wait_for(all_acked, timeout=15, message="an ack for every committed reading")
        delivery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivery
    asyncio.run(deliver_and_stop())


async def test_a_key_stored_by_another_writer_meanwhile_is_decided_again(migrated_db: str) -> None:
    """The race the context read cannot see (a writer that skipped the meter locks): the insert finds
    the key taken, nothing of the stale plan is kept, and deciding again gives duplicate or equivocation."""
    m = Meter.make("race")
    await register(migrated_db, [m])
    gw = Gateway("127.0.0.1", 1, GATEWAY, "")
    same = m.item(1, 10, 10)
    stored_first = gw.batch("first", [same, m.item(2, 20, 30)])
    racing = gw.batch("second", [same, m.item(2, 21, 31)])
    conn = await asyncpg.connect(migrated_db)
    try:
        registry = Registry()
        await registry.load(conn)
        limits = Limits.from_settings(TokenizationSettings())
        plans = []
        for batch in (stored_first, racing):
            parsed = parse_items(batch)
            # Both plans are made before either is written: neither sees the other's rows.
            plans.append(classify(batch, parsed, verify_signatures(parsed, registry.get), {}, registry.get,
                                  limits=limits, now=int(time.time())))
        await write_plan(conn, plans[0])
        with pytest.raises(StaleDecision):
            async with conn.transaction():
                await write_plan(conn, plans[1])
        assert (await query(migrated_db, "SELECT count(*) AS n FROM rejected_readings"))[0]["n"] == 0
        parsed = parse_items(racing)
        plan, _ = await decide_and_write(conn, racing, parsed, verify_signatures(parsed, registry.get),
                                         registry.get, limits=limits, now=int(time.time()))
    finally:
        await conn.close()
    assert [(r.status, r.reason) for r in plan.results()] == [("duplicate", None), ("rejected", Reason.EQUIVOCATION)]
    status = await query(migrated_db, "SELECT status FROM meters WHERE meter_id = 'race'")
    assert status[0]["status"] == "quarantined"
    assert (await query(migrated_db, "SELECT count(*) AS n FROM meter_readings"))[0]["n"] == 2


async def test_postgres_connections_killed_mid_stream_lose_nothing(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    meters = [Meter.make(f"pg-{i}") for i in range(20)]
    await register(migrated_db, meters)
    consumer = consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    batches = fleet_batches(gw, meters, readings_each=30, batch_size=20, prefix="pg")  # 600 readings, 30 batches
    database = migrated_db.rsplit("/", 1)[1]

    async def kill_backends() -> int:
        rows = await query(migrated_db.rsplit("/", 1)[0] + "/postgres",
                           "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE datname = $1 AND application_name = '' AND pid <> pg_backend_pid()", database)
        return len(rows)

    delivery = asyncio.create_task(gw.deliver(batches, resend_after=5, timeout=50))
    killed = 0
    while not delivery.done() and killed < 4:
        killed += await kill_backends() > 0
        await asyncio.sleep(0.15)  # pacing the fault injection, not waiting for a condition
    await delivery

    keys = await query(migrated_db, "SELECT meter_id, seq FROM meter_readings")
    assert len(keys) == len({(r["meter_id"], r["seq"]) for r in keys}) == 600
    assert {r.status for a in gw.acks.values() for r in a.results} <= {"accepted", "duplicate"}
    assert consumer.terminate() == 0


async def test_consumer_over_tls_with_the_configured_ca(
        broker_factory: BrokerFactory, migrated_db: str, gateway_password: str, tmp_path: Path) -> None:
    certs = generate_dev_certs(tmp_path / "certs")
    broker = broker_factory("cloud", users={GATEWAY: gateway_password}, tls_port=free_port(), certs_dir=certs)
    assert broker.tls_port is not None
    meter = Meter.make("tls-1")
    await register(migrated_db, [meter])
    url = f"mqtts://cloud-consumer:{broker.users['cloud-consumer']}@127.0.0.1:{broker.tls_port}"
    consumer = ConsumerProcess(dsn=migrated_db, broker_url=url, client_id="cloud-consumer-tls", log_dir=tmp_path,
                               env={"GRIDTOKENX_CLOUD_BROKER_CA": str(certs / "ca.crt")})
    try:
        consumer.wait_ready()
        gw = Gateway("127.0.0.1", broker.port, GATEWAY, gateway_password)
        acks = (await gw.deliver([gw.batch("tls", [meter.item(1, 10, 10)])]))
        assert acks["tls"].results[0].status == "accepted"
        assert consumer.terminate() == 0
    finally:
        consumer.close()

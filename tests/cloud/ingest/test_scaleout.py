"""Consumer processes on the shared subscription: the load splits, killing one loses nothing, and a
crash between the Postgres commit and the ack leads to a re-send recognised as duplicate."""

from __future__ import annotations

import asyncio

from gridtokenx.harness.brokers import Mosquitto
from protocol.envelopes import Batch, BatchItem
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import Gateway, Meter, query, register
from tests.helpers import async_wait_for

EXPORT_WH = 40


def fleet_batches(gw: Gateway, meters: list[Meter], readings_each: int, batch_size: int,
                  prefix: str) -> list[Batch]:
    """Consistent readings (register = seq × 40 Wh), interleaved so each batch mixes meters."""
    items: list[BatchItem] = [m.item(seq, EXPORT_WH, seq * EXPORT_WH)
                              for seq in range(1, readings_each + 1) for m in meters]
    return [gw.batch(f"{prefix}-{i // batch_size:04d}", items[i:i + batch_size])
            for i in range(0, len(items), batch_size)]


async def stored_keys(dsn: str) -> list[tuple[str, int]]:
    return [(r["meter_id"], r["seq"]) for r in await query(dsn, "SELECT meter_id, seq FROM meter_readings")]


def test_two_consumers_split_the_load_and_killing_one_loses_nothing(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    meters = [Meter.make(f"m-{i:03d}") for i in range(40)]
    asyncio.run(register(migrated_db, meters))
    a, b = consumers("cloud-consumer-a"), consumers("cloud-consumer-b")
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    batches = fleet_batches(gw, meters, readings_each=30, batch_size=40, prefix="gw1")  # 1200 readings, 30 batches
    first, second = batches[:12], batches[12:]

    asyncio.run(gw.deliver(first, resend_after=5))
    assert a.metric("gridtokenx_cloud_batches_total") > 0 and b.metric("gridtokenx_cloud_batches_total") > 0, \
        "both consumers on the shared subscription should have taken batches"

    async def deliver_and_kill() -> None:
        acked = asyncio.Event()
        delivery = asyncio.create_task(gw.deliver(second, resend_after=2, timeout=45, on_ack=acked))
        await asyncio.wait_for(acked.wait(), 20)
        a.kill()  # SIGKILL mid-stream: whatever it held unacked is re-sent by the gateway
        await delivery
    asyncio.run(deliver_and_kill())

    results = [r for ack in gw.acks.values() for r in ack.results]
    assert {r.status for r in results} <= {"accepted", "duplicate"}
    keys = asyncio.run(stored_keys(migrated_db))
    expected = {(i.meter_id, i.seq) for bt in batches for i in bt.items}
    assert len(keys) == len(set(keys)) == len(expected) == 1200
    assert set(keys) == expected
    assert b.terminate() == 0


async def test_kill_between_commit_and_ack_resend_is_duplicate(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    meters = [Meter.make(f"c-{i}") for i in range(10)]
    await register(migrated_db, meters)
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    batches = fleet_batches(gw, meters, readings_each=5, batch_size=25, prefix="crash")  # 50 readings, 2 batches
    crashing = consumers("cloud-consumer-1", crash_after_commit=1)

    delivery = asyncio.create_task(gw.deliver(batches, resend_after=1.5, timeout=45))

    async def exited() -> bool:
        return crashing.proc.poll() is not None
    await async_wait_for(exited, timeout=20, message="consumer crash after its first commit")
    assert crashing.proc.returncode == 137
    committed = await stored_keys(migrated_db)
    assert len(committed) == 25, "the first batch was committed before the crash"
    assert not gw.acks, "no ack may be sent for a batch whose commit the consumer did not survive"
    # Restart with the same client id (its persistent session), like a supervisor would.
    await asyncio.to_thread(consumers, "cloud-consumer-1")
    await delivery
    crashing.close()

    statuses = {ack.batch_id: {r.status for r in ack.results} for ack in gw.acks.values()}
    assert statuses == {"crash-0000": {"duplicate"}, "crash-0001": {"accepted"}}
    keys = await stored_keys(migrated_db)
    assert len(keys) == len(set(keys)) == 50

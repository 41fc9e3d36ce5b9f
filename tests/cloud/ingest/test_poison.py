"""Database failures by class, planted in real PostgreSQL by a trigger on meter_readings: transient
faults (connection lost, deadline, serialization, deadlock, resources) are retried until the batch
commits whole; anything else is poison, isolated by splitting the batch so that only the failing
item is set aside (ingest_dead_letters) and acked `unstorable`, and the rest commit."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cloud.ingest.consumer import EvidenceQuota, IngestConsumer, split_ack
from cloud.ingest.dbsteps import is_transient
from cloud.ingest.metrics import IngestMetrics
from cloud.settings import CloudSettings, IngestSettings
from protocol.envelopes import Ack, AckItem, Batch, encode
from protocol.reasons import Reason
from tests.cloud.ingest.support import Meter, query, register

PLANT = """
CREATE SEQUENCE planted_attempts;
CREATE TABLE planted_fault (action TEXT NOT NULL, times INT NOT NULL);
CREATE FUNCTION planted_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE f planted_fault;
BEGIN
    SELECT * INTO f FROM planted_fault;
    IF NEW.meter_id = 'poison-1' AND nextval('planted_attempts') <= f.times THEN
        IF f.action = 'terminate' THEN
            PERFORM pg_terminate_backend(pg_backend_pid());
            PERFORM pg_sleep(5);
        ELSIF f.action = 'sleep' THEN
            PERFORM pg_sleep(30);
        ELSE
            RAISE EXCEPTION 'planted fault %', f.action USING ERRCODE = f.action;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER planted_fault BEFORE INSERT ON meter_readings FOR EACH ROW EXECUTE FUNCTION planted_fault();
"""

TRANSIENT = ["terminate", "sleep", "40001", "40P01", "08006", "53300", "57P01"]
POISON = ["22P05", "22003", "23514", "P0001", "42501", "XX000"]


async def _store_with_fault(dsn: str, action: str, times: int) -> tuple[list[AckItem], int]:
    honest, poison, other = Meter.make("honest-1"), Meter.make("poison-1"), Meter.make("honest-2")
    await register(dsn, [honest, poison, other])
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(PLANT)
        await conn.execute("INSERT INTO planted_fault VALUES ($1, $2)", action, times)
    finally:
        await conn.close()
    settings = CloudSettings(database_url=dsn, ingest=IngestSettings(db_timeout_secs=2.0))
    consumer = IngestConsumer(settings, metrics=IngestMetrics())
    await consumer.db.open()
    try:
        await consumer.db.run("registry", consumer.registry.load)
        batch = Batch("gw1", "b-1", 1, [honest.item(1, 10, 10), poison.item(1, 10, 10), other.item(1, 10, 10),
                                        honest.item(2, 10, 20)])
        prepared = await consumer._prepare_batch(batch)
        results = await asyncio.wait_for(consumer.store(prepared), 60)
    finally:
        await consumer.db.close()
    stored = await query(dsn, "SELECT count(*) AS n FROM meter_readings")
    return results, stored[0]["n"]


@pytest.mark.parametrize("action", TRANSIENT)
async def test_transient_fault_is_retried_until_the_batch_commits_whole(migrated_db: str, action: str) -> None:
    results, stored = (await _store_with_fault(migrated_db, action, times=2))
    assert [r.status for r in results] == ["accepted"] * 4
    assert stored == 4
    assert (await query(migrated_db, "SELECT count(*) AS n FROM ingest_dead_letters"))[0]["n"] == 0


@pytest.mark.parametrize("sqlstate", POISON)
async def test_poison_is_split_out_and_the_rest_commits(migrated_db: str, sqlstate: str) -> None:
    results, stored = (await _store_with_fault(migrated_db, sqlstate, times=1_000_000))
    assert [(r.meter_id, r.status, r.reason) for r in results] == [
        ("honest-1", "accepted", None), ("poison-1", "rejected", Reason.UNSTORABLE),
        ("honest-2", "accepted", None), ("honest-1", "accepted", None)]
    assert stored == 3
    rows = (await query(migrated_db, "SELECT kind, reason, detail, batch_id FROM ingest_dead_letters"))
    assert [(r["kind"], r["reason"], r["batch_id"]) for r in rows] == [("item", "unstorable", "b-1")]
    assert "planted fault" in rows[0]["detail"]


def test_error_classes() -> None:
    assert is_transient(OSError("connection refused")) and is_transient(TimeoutError())
    assert is_transient(asyncpg.SerializationError()) and is_transient(asyncpg.QueryCanceledError())
    assert not is_transient(asyncpg.CharacterNotInRepertoireError())
    assert not is_transient(asyncpg.DataError()) and not is_transient(UnicodeEncodeError("utf-8", "", 0, 1, "x"))
    assert not is_transient(ValueError("bad input"))


def test_acks_are_split_to_fit_the_limit() -> None:
    results = [AckItem(f"meter-{i:05d}", i, "accepted") for i in range(5000)]
    ack = Ack("gw1", "b-1", results)
    parts = split_ack(ack, 16_384)
    assert len(parts) > 1 and all(len(encode(p)) <= 16_384 for p in parts)
    assert [r for p in parts for r in p.results] == results
    assert {p.batch_id for p in parts} == {"b-1"}
    assert split_ack(ack, 10**9) == [ack]


def test_evidence_quota_is_per_gateway_and_per_hour() -> None:
    now = [0.0]
    quota = EvidenceQuota(10_000, clock=lambda: now[0])
    assert quota.admit("a", 6_000) and not quota.admit("a", 6_000) and quota.admit("b", 6_000)
    assert quota.admit("a", 4_000) and not quota.admit("a", 1)
    now[0] = 3_600.0
    assert quota.admit("a", 10_000)

"""A hostile gateway with valid credentials attacks ingest while an honest gateway publishes
throughout: the honest readings keep being committed and acked (p99 within 2 s of publication),
and the hostile input ends recorded with its reason (issue 14)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gridtokenx.harness.brokers import Mosquitto
from protocol.envelopes import MAX_BATCH_ITEMS, Batch, BatchItem, encode
from protocol.reasons import Reason
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.hostile import HONEST, HOSTILE, Honest, publish_raw
from tests.cloud.ingest.support import Meter, query, register
from tests.helpers import async_wait_for


@pytest.fixture
def cloud(broker_factory: Callable[..., Mosquitto], gateway_password: str) -> Mosquitto:
    """The cloud broker with an honest and a hostile gateway account (same password, distinct users)."""
    return broker_factory("cloud", users={GATEWAY: gateway_password, HONEST: gateway_password,
                                          HOSTILE: gateway_password})


async def dead_letters(dsn: str) -> dict[str, str]:
    """detail → reason of every recorded bad envelope."""
    rows = await query(dsn, "SELECT reason, detail FROM ingest_dead_letters WHERE kind = 'envelope'")
    return {r["detail"]: r["reason"] for r in rows}


def _json_batch(batch_id: str, sent_at: str = "1", items: str = "[]") -> bytes:
    return (f'{{"gateway_id":"{HOSTILE}","batch_id":"{batch_id}","sent_at":{sent_at},"items":{items}}}').encode()


def test_text_and_integers_postgres_cannot_store_do_not_stop_ingest(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    honest_meter, victim = Meter.make("honest-1"), Meter.make("hostile-m1")
    asyncio.run(register(migrated_db, [honest_meter, victim]))
    consumer = consumers()
    now = int(time.time())
    good_payload = victim.sign(victim.reading(1, 10, 10))
    envelopes = [
        encode(Batch(HOSTILE, "nul\x00id", now, [victim.item(1, 10, 10)])),            # NUL in batch_id
        _json_batch("big-sent-at", sent_at=str(2**70)),                               # sent_at beyond int64
        _json_batch("\\ud800"),                                                       # lone surrogate
        b'{"gateway_id":"' + HOSTILE.encode() + b'","batch_id":"\xff\xfe","sent_at":1,"items":[]}',  # not UTF-8
        encode(Batch(HOSTILE, "too-many", now, [BatchItem("m", 1, b"")] * (MAX_BATCH_ITEMS + 1))),
        encode(Batch(HONEST, "not-mine", now, [])),                                  # another gateway's name
    ]
    # Good envelopes whose items carry poison claims: each item is rejected, the batch is acked.
    items_batch = encode(Batch(HOSTILE, "bad-items", now, [
        BatchItem(victim.meter_id, 2**63, good_payload),                              # seq beyond int64
        BatchItem("hostile\x00m1", 1, victim.sign(victim.reading(2, 10, 20))),        # NUL in meter_id
        BatchItem(victim.meter_id, 5, b"\x00\xff" * 3000),                            # oversized payload
    ]))

    async def attack() -> Honest:
        honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter)
        async with honest.running():
            await async_wait_for(lambda: _true(len(honest.latency) >= 5), timeout=20, message="honest traffic")
            await publish_raw("127.0.0.1", cloud.port, gateway_password, [*envelopes, items_batch])

            async def all_recorded() -> bool:
                rejected = await query(migrated_db, "SELECT count(*) AS n FROM rejected_readings WHERE batch_id = $1",
                                       "bad-items")
                return len(await dead_letters(migrated_db)) >= len(envelopes) and rejected[0]["n"] == 3
            await async_wait_for(all_recorded, timeout=20, message="every hostile input recorded")
            started = len(honest.published)
            await async_wait_for(lambda: _true(len(honest.published) >= started + 20), timeout=20,
                                 message="honest traffic after the attack")
        return honest

    honest = asyncio.run(attack())
    honest.assert_unharmed()
    reasons = sorted((asyncio.run(dead_letters(migrated_db))).values())
    assert reasons == sorted([Reason.MALFORMED] * 4 + [Reason.OVERSIZED, Reason.TOPIC_MISMATCH])
    rows = asyncio.run(query(migrated_db, "SELECT meter_id, seq, reason, payload_bytes, length(payload) AS kept"
                                          " FROM rejected_readings WHERE batch_id = 'bad-items' ORDER BY reason"))
    assert {(r["meter_id"], r["seq"], r["reason"]) for r in rows} == {
        (None, 1, "malformed"), (victim.meter_id, None, "malformed"), (victim.meter_id, 5, "oversized")}
    oversized = next(r for r in rows if r["reason"] == "oversized")
    assert (oversized["payload_bytes"], oversized["kept"]) == (6000, 4096)
    assert consumer.metric("gridtokenx_cloud_bad_envelopes_total") == len(envelopes)
    assert consumer.terminate() == 0


async def _true(value: bool) -> bool:
    return value

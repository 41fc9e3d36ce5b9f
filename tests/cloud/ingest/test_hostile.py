"""A hostile gateway with valid credentials attacks ingest while an honest gateway publishes
throughout: the honest readings keep being committed and acked (p99 within 2 s of publication),
and the hostile input ends recorded with its reason (issue 14)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from gridtokenx.harness.brokers import CONFIG_ROOT, Mosquitto
from protocol import topics
from protocol.envelopes import MAX_BATCH_ITEMS, Ack, Batch, BatchItem, decode_ack, encode
from protocol.reasons import Reason
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.hostile import HONEST, HOSTILE, Honest, publish_raw, warm_up
from tests.cloud.ingest.support import ConsumerProcess, Meter, query, register
from tests.helpers import async_wait_for, wait_for


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


def _poison_batch(victim: Meter) -> bytes:
    return encode(Batch(HOSTILE, "nul\x00retained", int(time.time()), [victim.item(1, 10, 10)]))


def test_retained_poison_is_refused_before_start_and_after_a_broker_restart(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    honest_meter, victim = Meter.make("honest-1"), Meter.make("hostile-m1")
    asyncio.run(register(migrated_db, [honest_meter, victim]))

    async def try_retained() -> bool:
        """True when the broker took the retained publish (it must not)."""
        try:
            await publish_raw("127.0.0.1", cloud.port, gateway_password, [_poison_batch(victim)], retain=True)
        except aiomqtt.MqttError:
            return False
        return True
    assert not asyncio.run(try_retained()), "the cloud broker accepted a retained batch"
    cloud.restart()
    assert not asyncio.run(try_retained())
    consumer = consumers()

    async def honest_traffic(first_seq: int) -> Honest:
        honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter, _seq=first_seq)
        async with honest.running():
            await async_wait_for(lambda: _true(len(honest.published) >= 20), timeout=20, message="honest traffic")
        return honest
    asyncio.run(honest_traffic(0)).assert_unharmed()
    cloud.restart()
    assert not asyncio.run(try_retained())
    asyncio.run(warm_up("127.0.0.1", cloud.port, gateway_password, honest_meter, 999))
    asyncio.run(honest_traffic(1000)).assert_unharmed()
    assert consumer.metric("gridtokenx_cloud_bad_envelopes_total") == 0
    assert consumer.terminate() == 0


def test_consumer_discards_retained_batches_a_permissive_broker_delivers(
        broker_factory: Callable[..., Mosquitto], migrated_db: str, gateway_password: str, tmp_path: Path) -> None:
    """Defence in depth: a broker configured without `retain_available false` hands the retained
    batch to every consumer on subscribe, and again after a restart; the consumer discards it."""
    root = tmp_path / "broker-config"
    shutil.copytree(CONFIG_ROOT, root)
    conf = root / "cloud" / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("retain_available false", ""))
    broker = broker_factory("cloud", users={HONEST: gateway_password, HOSTILE: gateway_password},
                            config_root=root)
    honest_meter, victim = Meter.make("honest-1"), Meter.make("hostile-m1")
    asyncio.run(register(migrated_db, [honest_meter, victim]))
    retained_valid = encode(Batch(HOSTILE, "retained-valid", int(time.time()), [victim.item(1, 10, 10)]))
    asyncio.run(publish_raw("127.0.0.1", broker.port, gateway_password, [_poison_batch(victim)], retain=True))
    asyncio.run(publish_raw("127.0.0.1", broker.port, gateway_password, [retained_valid], retain=True,
                            topic="edge/hostile-gw/batches"))
    consumer = ConsumerProcess(dsn=migrated_db, broker_url=broker.url_for("cloud-consumer"),
                               client_id="cloud-consumer-1", log_dir=tmp_path)
    try:
        consumer.wait_ready()
        wait_for(lambda: consumer.metric('gridtokenx_cloud_bad_envelopes_total{reason="retained"}') >= 1,
                 timeout=10, message="the retained batch discarded")

        async def honest_traffic(first_seq: int) -> Honest:
            honest = Honest("127.0.0.1", broker.port, gateway_password, honest_meter, _seq=first_seq)
            async with honest.running():
                await async_wait_for(lambda: _true(len(honest.published) >= 20), timeout=20, message="honest")
            return honest
        asyncio.run(honest_traffic(0)).assert_unharmed()
        before = consumer.metric('gridtokenx_cloud_bad_envelopes_total{reason="retained"}')
        broker.restart()
        asyncio.run(warm_up("127.0.0.1", broker.port, gateway_password, honest_meter, 999))
        asyncio.run(honest_traffic(1000)).assert_unharmed()
        wait_for(lambda: consumer.metric('gridtokenx_cloud_bad_envelopes_total{reason="retained"}') > before,
                 timeout=10, message="the retained batch discarded again after the broker restart")
        stored = asyncio.run(query(migrated_db, "SELECT count(*) AS n FROM meter_readings WHERE meter_id = $1",
                                   victim.meter_id))
        assert stored[0]["n"] == 0, "a retained batch was committed"
        rows = asyncio.run(query(migrated_db, "SELECT reason FROM ingest_dead_letters"))
        assert {r["reason"] for r in rows} == {"retained"}
        assert consumer.terminate() == 0
    finally:
        consumer.close()


def test_a_gateway_in_the_consumer_group_gets_nothing_and_delays_nobody(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    honest_meter = Meter.make("honest-1")
    asyncio.run(register(migrated_db, [honest_meter]))
    consumer = consumers()
    filters = ["$share/cloud/edge/+/batches", "$share/cloud-consumer/edge/+/batches", "edge/+/batches", "#"]

    async def attack() -> tuple[Honest, int]:
        received = 0
        async with contextlib.AsyncExitStack() as stack:
            members = []
            for i in range(4):  # four members, as in the report
                member = await stack.enter_async_context(aiomqtt.Client(
                    "127.0.0.1", cloud.port, username=HOSTILE, password=gateway_password,
                    identifier=f"{HOSTILE}-member-{i}", clean_session=False))
                for f in filters:
                    await member.subscribe(f, qos=1)
                members.append(member)

            async def count(member: aiomqtt.Client) -> None:
                nonlocal received
                async for _ in member.messages:
                    received += 1
            readers = [asyncio.create_task(count(m)) for m in members]
            honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter)
            async with honest.running():
                await async_wait_for(lambda: _true(len(honest.published) >= 40), timeout=30, message="honest")
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        return honest, received

    honest, received = asyncio.run(attack())
    honest.assert_unharmed(min_batches=40)
    assert received == 0, f"a gateway subscribed to the consumers' batches and received {received} message(s)"
    assert consumer.terminate() == 0


def test_huge_batches_are_refused_and_acks_are_split_to_fit(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    """The report's 140,000 empty items (5.7 MB, a 9.7 MB ack) is an oversized envelope now; a
    batch at the item limit is acked in parts that each fit the configured ack limit."""
    honest_meter = Meter.make("honest-1")
    asyncio.run(register(migrated_db, [honest_meter]))
    consumer = consumers(env={"GRIDTOKENX_INGEST_ACK_MAX_BYTES": "16384"})
    now = int(time.time())
    huge = encode(Batch(HOSTILE, "huge", now, [BatchItem("m", 1, b"")] * 140_000))
    assert len(huge) < 6_000_000
    at_limit = Batch(HOSTILE, "at-limit", now, [BatchItem(f"meter-{i:04d}", i, b"") for i in range(MAX_BATCH_ITEMS)])

    async def attack() -> tuple[Honest, list[Ack]]:
        acks: list[Ack] = []
        async with aiomqtt.Client("127.0.0.1", cloud.port, username=HOSTILE, password=gateway_password,
                                  identifier=f"{HOSTILE}-acks") as listener:
            await listener.subscribe(topics.acks(HOSTILE), qos=1)
            honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter)
            async with honest.running():
                await publish_raw("127.0.0.1", cloud.port, gateway_password, [huge, encode(at_limit)])

                async def collect() -> None:
                    async for message in listener.messages:
                        assert isinstance(message.payload, bytes) and len(message.payload) <= 16384
                        acks.append(decode_ack(message.payload))
                        if sum(len(a.results) for a in acks) >= MAX_BATCH_ITEMS:
                            return
                await asyncio.wait_for(collect(), 30)
                started = len(honest.published)
                await async_wait_for(lambda: _true(len(honest.published) >= started + 20), timeout=20,
                                     message="honest traffic after the attack")
        return honest, acks

    honest, acks = asyncio.run(attack())
    honest.assert_unharmed()
    assert len(acks) > 1 and {a.batch_id for a in acks} == {"at-limit"}
    results = [r for a in acks for r in a.results]
    assert [(r.meter_id, r.seq) for r in results] == [(i.meter_id, i.seq) for i in at_limit.items]
    assert {r.reason for r in results} == {Reason.MALFORMED}
    assert consumer.metric('gridtokenx_cloud_bad_envelopes_total{reason="oversized"}') == 1
    assert consumer.terminate() == 0


def test_evidence_is_bounded_per_gateway_with_a_counter(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    """Rejected payloads are stored cut to 4096 bytes, and a gateway past its quota keeps only
    their length and SHA-256; the counter names the gateway."""
    honest_meter = Meter.make("honest-1")
    asyncio.run(register(migrated_db, [honest_meter]))
    consumer = consumers(env={"GRIDTOKENX_INGEST_EVIDENCE_QUOTA_BYTES": str(4 * 4096)})
    garbage = [BatchItem("hostile-m1", i, bytes([i]) * 4096) for i in range(10)]
    big = BatchItem("hostile-m1", 99, b"\x01" * 4_000_000)  # 5.3 MB in base64: the broker takes it

    async def attack() -> Honest:
        honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter)
        async with honest.running():
            await publish_raw("127.0.0.1", cloud.port, gateway_password,
                              [encode(Batch(HOSTILE, "flood", int(time.time()), [*garbage, big]))])

            async def recorded() -> bool:
                rows = await query(migrated_db, "SELECT count(*) AS n FROM rejected_readings")
                return bool(rows[0]["n"] == 11)
            await async_wait_for(recorded, timeout=20, message="11 rejected rows")
            started = len(honest.published)
            await async_wait_for(lambda: _true(len(honest.published) >= started + 20), timeout=20,
                                 message="honest traffic after the attack")
        return honest

    asyncio.run(attack()).assert_unharmed()
    rows = asyncio.run(query(migrated_db, "SELECT seq, payload_bytes, length(payload) AS kept,"
                                          " length(payload_sha256) AS sha FROM rejected_readings"))
    assert sum(r["kept"] for r in rows) == 4 * 4096
    assert {r["sha"] for r in rows} == {32}
    assert {r["seq"]: r["payload_bytes"] for r in rows}[99] == 4_000_000
    assert consumer.metric('gridtokenx_cloud_evidence_over_quota_total{gateway_id="hostile-gw"}') == 7
    assert consumer.terminate() == 0


def test_one_gateways_volume_does_not_delay_another(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    """A gateway that publishes a backlog of full, valid batches (several seconds of work for one
    consumer) delays an honest gateway's batches by about one batch, not by its whole backlog: the
    consumer takes batches round-robin per gateway (`fairness.FairQueue`)."""
    honest_meter = Meter.make("honest-1")
    flood_meters = [Meter.make(f"flood-{i:03d}") for i in range(100)]
    asyncio.run(register(migrated_db, [honest_meter, *flood_meters]))
    consumer = consumers()
    now = int(time.time())
    items = [m.item(seq, 10, seq * 10, end=now - 600 - (20 - seq) * 300) for seq in range(1, 21) for m in flood_meters]
    flood = [encode(Batch(HOSTILE, f"flood-{i:03d}", now, items[i:i + MAX_BATCH_ITEMS]))
             for i in range(0, len(items), MAX_BATCH_ITEMS)]  # 2 × 1000 readings, repeated below

    async def attack() -> Honest:
        honest = Honest("127.0.0.1", cloud.port, gateway_password, honest_meter)
        async with honest.running():
            await async_wait_for(lambda: _true(len(honest.latency) >= 5), timeout=20, message="honest traffic")
            # Re-sent batches are real work too (parse, verify, context read, duplicate).
            await publish_raw("127.0.0.1", cloud.port, gateway_password, flood * 10)

            async def flood_done() -> bool:
                return consumer.metric("gridtokenx_cloud_batches_total") >= len(flood) * 10
            await async_wait_for(flood_done, timeout=120, message="the flood processed")
        return honest

    honest = asyncio.run(attack())
    print(f"honest p99 {honest.p99():.2f} s over {len(honest.latency)} batches")
    honest.assert_unharmed()
    assert consumer.terminate() == 0

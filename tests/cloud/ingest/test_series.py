"""A meter's series through a real broker, a real consumer process and real Postgres: intervals never
overlap, never exceed the configured length, never exceed capacity; legacy readings alike."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from gridtokenx.harness.brokers import Mosquitto
from protocol import legacy
from protocol.envelopes import BatchItem
from protocol.reading import Reading
from protocol.wire import frame, sign
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import Gateway, Meter, query, register


def _results(acks: dict, batch_id: str) -> Counter[str]:  # type: ignore[type-arg]
    return Counter(r.reason or r.status for r in acks[batch_id].results)


def test_overlapping_intervals_never_over_mint(consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto,
                                               gateway_password: str) -> None:
    """The report's attack: 20 readings of a 5,100 W meter over one interval, each at the energy the
    interval allows; before the fix every one was accepted (20 × the meter's capacity)."""
    victim = Meter.make("over", capacity_w=5_100)
    long_ = Meter.make("long", capacity_w=5_100)
    other = Meter.make("bystander")
    asyncio.run(register(migrated_db, [victim, long_, other]))
    consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    end = int(time.time()) - 600
    start = end - 3_600
    wh = 5_100  # 5,100 W × 1 h: exactly what capacity allows for one interval
    same = [BatchItem("over", seq, victim.sign(Reading("over", seq, start, end, wh, export_register_wh=wh * seq)))
            for seq in range(1, 21)]
    # Six days in one reading (the report's 734 kWh stretch) is refused on its length alone.
    six_days = Reading("long", 1, end - 6 * 86_400, end, 100_000, export_register_wh=100_000)
    # Variant: a later seq whose interval reaches back into the accepted one (partial overlap) in a later batch.
    partial = Reading("bystander", 2, end - 1_800, end + 200, 10, export_register_wh=20)
    acks = asyncio.run(gw.deliver([
        gw.batch("same", same),
        gw.batch("long", [BatchItem("long", 1, long_.sign(six_days))]),
        gw.batch("ok", [BatchItem("bystander", 1, other.sign(Reading("bystander", 1, start, end, 10,
                                                                      export_register_wh=10)))]),
    ]))
    assert _results(acks, "same") == Counter({"accepted": 1, "overlapping_interval": 1, "suspended_meter": 18})
    assert _results(acks, "long") == Counter({"interval_too_long": 1})
    assert _results(acks, "ok") == Counter({"accepted": 1})
    acks = asyncio.run(gw.deliver([gw.batch("partial", [BatchItem("bystander", 2, other.sign(partial))])]))
    assert _results(acks, "partial") == Counter({"overlapping_interval": 1})

    stored = asyncio.run(query(migrated_db, "SELECT meter_id, sum(export_wh) AS wh FROM meter_readings"
                                            " GROUP BY meter_id ORDER BY meter_id"))
    assert {r["meter_id"]: r["wh"] for r in stored} == {"over": wh, "bystander": 10}
    rows = asyncio.run(query(migrated_db, "SELECT meter_id, status FROM meters"))
    meters = {r["meter_id"]: r["status"] for r in rows}
    assert meters == {"over": "quarantined", "long": "active", "bystander": "quarantined"}
    evidence = asyncio.run(query(migrated_db, "SELECT meter_id, seq, detail FROM rejected_readings"
                                              " WHERE reason = 'overlapping_interval' ORDER BY meter_id"))
    assert [(r["meter_id"], r["seq"]) for r in evidence] == [("bystander", 2), ("over", 2)]
    assert "seq 1" in evidence[1]["detail"]


def test_legacy_readings_follow_the_same_series_rules(consumers: ConsumerFactory, migrated_db: str,
                                                      cloud: Mosquitto, gateway_password: str) -> None:
    """Legacy seq is the timestamp and its interval the 300 s before it: two timestamps 60 s apart
    overlap; a reading above capacity × 300 s is refused."""
    m = Meter.make("leg", capacity_w=12_000)  # 12 kW × 300 s = 1,000 Wh
    asyncio.run(register(migrated_db, [m]))
    consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    t = (int(time.time()) - 3_600) // 300 * 300

    def item(ts: int, wh: int) -> BatchItem:
        message = legacy.format_message("leg", ts, legacy.kwh_text(wh), m.wallet)
        return BatchItem("leg", ts, frame(message, sign(message, m.secret)))

    acks = asyncio.run(gw.deliver([gw.batch("a", [item(t, 1_000), item(t + 300, 1_001)])]))
    assert [r.reason or r.status for r in acks["a"].results] == ["accepted", "capacity_exceeded"]
    acks = asyncio.run(gw.deliver([gw.batch("b", [item(t + 60, 500)])]))
    assert [r.reason or r.status for r in acks["b"].results] == ["overlapping_interval"]
    rows = asyncio.run(query(migrated_db, "SELECT seq, export_wh FROM meter_readings"))
    assert [(r["seq"], r["export_wh"]) for r in rows] == [(t, 1_000)]


def test_two_consumers_racing_cannot_both_accept_overlapping_intervals(migrated_db: str) -> None:
    """Two consumers decide batches with overlapping readings of one meter at the same time (a
    gateway's consecutive batches on the shared subscription). Before per-meter locking both read
    the context before either wrote, and both were accepted."""
    from prometheus_client import CollectorRegistry

    from cloud.ingest.consumer import IngestConsumer, Prepared
    from cloud.ingest.metrics import IngestMetrics
    from cloud.ingest.pipeline import parse_items, verify_signatures
    from cloud.settings import CloudSettings
    from protocol.envelopes import Batch

    m = Meter.make("racer")
    asyncio.run(register(migrated_db, [m]))
    end = int(time.time()) - 600

    async def race() -> list[str]:
        import asyncpg

        consumers = []
        for _ in range(2):
            c = IngestConsumer(CloudSettings(database_url=migrated_db), metrics=IngestMetrics(CollectorRegistry()))
            conn = await asyncpg.connect(migrated_db)
            await c.registry.load(conn)
            consumers.append((c, conn))
        prepared = []
        for i, seq in enumerate((1, 2)):
            r = Reading("racer", seq, end - 900 + i * 300, end + i * 300, 10, export_register_wh=10 * seq)
            batch = Batch(gateway_id="gw1", batch_id=f"race-{seq}", sent_at=end, items=[BatchItem("racer", seq,
                                                                                              m.sign(r))])
            parsed = parse_items(batch)
            prepared.append(Prepared(batch, parsed, verify_signatures(parsed, consumers[i][0].registry.get)))
        plans = await asyncio.gather(*(c.persist(conn, p) for (c, conn), p in zip(consumers, prepared, strict=True)))
        for _, conn in consumers:
            await conn.close()
        return sorted(str(r.reason or r.status) for plan in plans for r in plan.results())

    assert asyncio.run(race()) == ["accepted", "overlapping_interval"]
    rows = asyncio.run(query(migrated_db, "SELECT seq FROM meter_readings"))
    assert len(rows) == 1

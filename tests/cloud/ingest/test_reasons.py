"""Every cloud reason code, produced by sending that bad input through a real broker to a real
consumer process and a real Postgres; none of it reaches meter_readings."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg

from cloud.ingest import admin
from gridtokenx.harness.brokers import Mosquitto
from protocol.envelopes import BatchItem
from protocol.reading import Reading
from protocol.reasons import Reason
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import Gateway, Meter, query, register


def test_every_reason_code_is_rejected_stored_and_counted(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    good, eq, reg, mis, small, sus = (Meter.make(n) for n in ("good", "eq", "reg", "mis", "small", "sus"))
    small = Meter.make("small", capacity_w=1_000)  # 1 kW × 300 s = 83 Wh at most
    stranger = Meter.make("stranger")  # never registered
    asyncio.run(register(migrated_db, [good, eq, reg, mis, small, sus]))

    async def suspend() -> None:
        conn = await asyncpg.connect(migrated_db)
        await admin.set_status(conn, "sus", "suspended", "test")
        await conn.close()
    asyncio.run(suspend())
    consumer = consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    now = int(time.time())

    first = [
        good.item(1, 100, 1_100), good.item(2, 100, 1_200),
        good.item(2, 100, 1_200),                                  # identical duplicate in the same batch
        eq.item(1, 50, 50),                                        # accepted; equivocated below
        reg.item(1, 10, 1_000), mis.item(1, 10, 1_000),            # register baselines
    ]
    bad = [
        BatchItem("good", 90, b"not a reading at all"),                               # malformed
        BatchItem("good", 91, good.sign(good.reading(92, 1, 1_201))),                 # malformed: claim ≠ payload
        BatchItem("good", 93, b"x" * 5000),                                           # oversized
        BatchItem("good", 3, good.sign(good.reading(3, 100, 1_300), secret=stranger.secret)),  # bad_signature
        stranger.item(1, 10, 10),                                                     # unknown_meter
        sus.item(1, 10, 10),                                                          # suspended_meter
        BatchItem("good", 4, good.sign(Reading(meter_id="good", seq=4, start=now - 900, end=now - 600,
                                               export_wh=-5, export_register_wh=1_200))),  # out_of_range
        good.item(5, 100_001, 200_000, ),                                             # out_of_range (> 100 kWh)
        good.item(6, 10, 1_400, end=now - 8 * 86_400),                                # too_old
        good.item(7, 10, 1_400, end=now + 3_600),                                     # in_future
        small.item(1, 500, 500),                                                      # capacity_exceeded
        reg.item(2, 10, 900),                                                         # register_regression
        mis.item(2, 10, 1_050),                                                       # register_mismatch
        eq.item(1, 51, 51),                                                           # equivocation
    ]
    expected = Counter({Reason.MALFORMED: 2, Reason.OVERSIZED: 1, Reason.BAD_SIGNATURE: 1,
                        Reason.UNKNOWN_METER: 1, Reason.SUSPENDED_METER: 1, Reason.OUT_OF_RANGE: 2,
                        Reason.TOO_OLD: 1, Reason.IN_FUTURE: 1, Reason.CAPACITY_EXCEEDED: 1,
                        Reason.REGISTER_REGRESSION: 1, Reason.REGISTER_MISMATCH: 1, Reason.EQUIVOCATION: 1})
    acks = asyncio.run(gw.deliver([gw.batch("b1", first)]))
    assert [r.status for r in acks["b1"].results] == ["accepted", "accepted", "duplicate", "accepted",
                                                       "accepted", "accepted"]
    acks = asyncio.run(gw.deliver([gw.batch("b2", bad)]))
    results = acks["b2"].results
    assert [(r.meter_id, r.seq) for r in results] == [(i.meter_id, i.seq) for i in bad]
    assert all(r.status == "rejected" for r in results), results
    assert Counter(r.reason for r in results) == expected

    stored = asyncio.run(query(migrated_db, "SELECT reason, count(*) AS n FROM rejected_readings GROUP BY reason"))
    assert {Reason(r["reason"]): r["n"] for r in stored} == dict(expected)
    readings = asyncio.run(query(migrated_db, "SELECT meter_id, seq, payload FROM meter_readings"))
    assert sorted((r["meter_id"], r["seq"]) for r in readings) == [
        ("eq", 1), ("good", 1), ("good", 2), ("mis", 1), ("reg", 1)]
    # The accepted reading of the equivocating meter stays; the conflicting one is evidence; the meter is quarantined.
    eq_row = next(r for r in readings if r["meter_id"] == "eq")
    assert eq_row["payload"] == first[3].payload
    evidence = asyncio.run(query(migrated_db, "SELECT payload FROM rejected_readings WHERE reason = 'equivocation'"))
    assert evidence[0]["payload"] == bad[-1].payload
    status = asyncio.run(query(migrated_db, "SELECT status, status_reason FROM meters WHERE meter_id = 'eq'"))
    assert status[0]["status"] == "quarantined" and "equivocation" in status[0]["status_reason"]
    # Wallet comes from the registry.
    wallets = asyncio.run(query(migrated_db,
                                "SELECT DISTINCT wallet_address FROM meter_readings WHERE meter_id = 'good'"))
    assert [w["wallet_address"] for w in wallets] == [good.wallet]

    # A re-sent batch (same id and items): duplicates for what was stored, same rejections, no new rows.
    gw.acks.clear()
    acks = asyncio.run(gw.deliver([gw.batch("b1", first), gw.batch("b2", bad)]))
    assert {r.status for r in acks["b1"].results} == {"duplicate"}
    assert Counter(r.reason for r in acks["b2"].results) == expected
    assert asyncio.run(query(migrated_db, "SELECT count(*) AS n FROM meter_readings"))[0]["n"] == 5
    assert asyncio.run(query(migrated_db, "SELECT count(*) AS n FROM rejected_readings"))[0]["n"] == sum(
        expected.values())
    # The quarantined meter's next reading is refused.
    acks = asyncio.run(gw.deliver([gw.batch("b3", [eq.item(2, 10, 60)])]))
    assert acks["b3"].results[0].reason == Reason.SUSPENDED_METER

    assert consumer.metric("gridtokenx_cloud_readings_accepted_total") == 5
    assert consumer.metric('gridtokenx_cloud_readings_rejected_total{reason="equivocation"}') == 2
    assert consumer.terminate() == 0

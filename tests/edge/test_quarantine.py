"""Bad payloads land in quarantine with their reason and never reach the cloud."""

from __future__ import annotations

from typing import Any

import base58

from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.standin import Fleet, make_meters, meters_csv, reading_payload
from protocol.reading import Reading
from protocol.topics import meter_readings
from protocol.wire import V1_PREFIX, sign, sign_reading
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def test_bad_payloads_are_quarantined_with_reasons_and_never_forwarded(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(3)
    a, b, c = meters
    keys = rig.tmp / "meters.csv"
    keys.write_text(meters_csv(meters))
    garbage = V1_PREFIX + b'{"meter_id": "m00000", "seq": '
    bad = {
        "malformed": (meter_readings(a.meter_id), garbage + b"\n" + base58.b58encode(sign(garbage, a.secret_key))),
        "oversized": (meter_readings(a.meter_id), b"x" * 5000),
        # A valid reading of meter b on meter c's topic, and a topic level that is not a meter id.
        "topic_mismatch": (meter_readings(c.meter_id), reading_payload(b, 7)),
        "topic_shape": ("meters/not a meter!/readings", reading_payload(a, 8)),
        # Meter a's reading signed with meter b's key: the pre-check catches it.
        "bad_signature": (meter_readings(a.meter_id),
                          sign_reading(Reading(a.meter_id, 9, 1_793_491_200, 1_793_492_100, 5,
                                               export_register_wh=5), b.secret_key)),
    }
    good = [(meter_readings(m.meter_id), reading_payload(m, s)) for m in meters for s in range(5)]
    agent = agent_factory("--meter-keys", str(keys)).start()
    with rig.standin(keep_payloads=True) as cloud, Fleet(rig.fleet_url) as fleet:
        fleet.publish(list(bad.values()) + good)
        wait_for(lambda: cloud.seen.unique() == len(good), timeout=30, message="the good readings at the cloud")
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 0, timeout=15, message="an empty buffer")
        metrics = agent.metrics()
        assert agent.terminate() == 0

    with agent.db() as db:
        rows = {bytes(p): (r, t) for r, t, p in db.execute("SELECT reason, topic, payload FROM quarantine")}
    assert len(rows) == len(bad)
    expected_reason = {"malformed": "malformed", "oversized": "oversized", "topic_mismatch": "topic_mismatch",
                       "topic_shape": "topic_mismatch", "bad_signature": "bad_signature"}
    for name, (topic, payload) in bad.items():
        # An oversized payload keeps its first KiB (a flood of them must not fill the disk).
        kept = payload[:1024] if name == "oversized" else payload
        assert rows[kept] == (expected_reason[name], topic), name
        assert payload not in cloud.seen.payloads.values(), name
    assert cloud.seen.keys == {(m.meter_id, s) for m in meters for s in range(5)}
    assert metrics['gridtokenx_edge_quarantined_total{reason="topic_mismatch"}'] == 2
    assert metrics['gridtokenx_edge_quarantined_total{reason="bad_signature"}'] == 1
    assert metrics["gridtokenx_edge_received_total"] == len(bad) + len(good)


def test_duplicates_are_stored_once_and_equivocation_is_kept_as_evidence(rig: Rig, agent_factory: Any) -> None:
    (meter,) = make_meters(1)
    first = reading_payload(meter, 3)
    twin = sign_reading(Reading(meter.meter_id, 3, 1_793_491_200, 1_793_492_100, 999, export_register_wh=999),
                        meter.secret_key)
    # Nothing listens on the cloud URL: readings stay buffered, so the twin meets the first one there.
    agent = agent_factory(cloud_url=f"mqtt://gw-test:x@127.0.0.1:{free_port()}").start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish([(meter_readings(meter.meter_id), first)] * 3 + [(meter_readings(meter.meter_id), twin)])
    wait_for(lambda: agent.count("SELECT count(*) FROM quarantine") == 1, timeout=15, message="the twin")
    with agent.db() as db:
        assert db.execute("SELECT payload, state FROM readings").fetchall() == [(first, "pending")]
        assert db.execute("SELECT payload, reason FROM quarantine").fetchall() == [(twin, "equivocation")]
    metrics = agent.metrics()
    assert metrics["gridtokenx_edge_duplicates_total"] == 2
    assert metrics['gridtokenx_edge_quarantined_total{reason="equivocation"}'] == 1
    assert agent.terminate() == 0

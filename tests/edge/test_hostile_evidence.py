"""Issue 15: quarantined payloads (junk, oversized) and rejected readings count against a quota and
a TTL, so a meter sending junk cannot fill the gateway's disk with evidence."""

from __future__ import annotations

import secrets
from typing import Any

from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.standin import Fleet, make_meters
from protocol.topics import meter_readings
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def test_junk_and_oversized_payloads_stay_under_the_evidence_quota(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(5)
    agent = agent_factory("--max-evidence-bytes", "200000",
                          cloud_url=f"mqtt://gw-test:x@127.0.0.1:{free_port()}").start()
    junk = [(meter_readings(m.meter_id), secrets.token_bytes(n)) for _ in range(40) for m in meters
            for n in (3000, 8000)]  # 400 messages, 2.2 MB: 11 times the quota
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(junk)
    wait_for(lambda: agent.metrics()["gridtokenx_edge_received_total"] == len(junk), timeout=30,
             message="every junk message received")
    stored = agent.count("SELECT coalesce(sum(length(payload)), 0) FROM quarantine")
    assert 0 < stored <= 200_000
    # An oversized payload keeps its first KiB, and says how big it was.
    assert agent.count("SELECT max(length(payload)) FROM quarantine WHERE reason = 'oversized'") == 1024
    assert agent.count("SELECT count(*) FROM quarantine WHERE detail LIKE '%of 8000 bytes kept%'") > 0
    assert agent.metrics()["gridtokenx_edge_evidence_evicted_total"] > 0
    assert agent.terminate() == 0


def test_quarantine_expires_with_the_ttl(rig: Rig, agent_factory: Any) -> None:
    (meter,) = make_meters(1)
    agent = agent_factory("--ttl-seconds", "2", cloud_url=f"mqtt://gw-test:x@127.0.0.1:{free_port()}").start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish([(meter_readings(meter.meter_id), b"junk %d" % i) for i in range(20)])
    wait_for(lambda: agent.count("SELECT count(*) FROM quarantine") == 20, timeout=15, message="20 quarantined")
    wait_for(lambda: agent.count("SELECT count(*) FROM quarantine") == 0, timeout=15,
             message="quarantined payloads gone after the TTL")
    assert agent.terminate() == 0

"""A full buffer does exactly what its policy says, and every drop is a row and a counter.

The cloud is unreachable (nothing listens on its URL), so everything stays pending.
"""

from __future__ import annotations

from typing import Any

import pytest

from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.standin import Fleet, make_meters, reading_payload
from protocol.topics import meter_readings
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def _unreachable() -> str:
    return f"mqtt://gw-test:x@127.0.0.1:{free_port()}"


@pytest.mark.parametrize(("policy", "kept", "dropped"), [
    ("drop_oldest", range(50, 150), range(0, 50)),
    ("reject_new", range(0, 100), range(100, 150)),
])
def test_row_quota(rig: Rig, agent_factory: Any, policy: str, kept: range, dropped: range) -> None:
    (meter,) = make_meters(1)
    agent = agent_factory("--max-rows", "100", "--quota-policy", policy, cloud_url=_unreachable()).start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish([(meter_readings(meter.meter_id), reading_payload(meter, s)) for s in range(150)])
    wait_for(lambda: agent.metrics()["gridtokenx_edge_received_total"] == 150, timeout=15,
             message="150 readings received")
    with agent.db() as db:
        assert [s for (s,) in db.execute("SELECT seq FROM readings ORDER BY id")] == list(kept)
        drops = db.execute("SELECT seq, reason, detail FROM drops ORDER BY id").fetchall()
    assert [s for s, _, _ in drops] == list(dropped)
    assert {(r, d) for _, r, d in drops} == {("quota_dropped", f"{policy}: rows quota full")}
    metrics = agent.metrics()
    assert metrics['gridtokenx_edge_dropped_total{reason="quota_dropped"}'] == 50
    assert metrics['gridtokenx_edge_buffer_rows{state="pending"}'] == 100
    assert agent.count("SELECT value FROM counters WHERE name = 'dropped'") == 50
    assert "dropped" in agent.output()  # and a log line
    assert agent.terminate() == 0


def test_byte_quota_drop_oldest(rig: Rig, agent_factory: Any) -> None:
    (meter,) = make_meters(1)
    payloads = [reading_payload(meter, s) for s in range(40)]
    limit = sum(len(p) for p in payloads[:10])  # room for about ten readings
    agent = agent_factory("--max-bytes", str(limit), cloud_url=_unreachable()).start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish([(meter_readings(meter.meter_id), p) for p in payloads])
    wait_for(lambda: agent.metrics()["gridtokenx_edge_received_total"] == 40, timeout=15,
             message="40 readings received")
    with agent.db() as db:
        kept = [s for (s,) in db.execute("SELECT seq FROM readings ORDER BY id")]
        total = db.execute("SELECT sum(size) FROM readings").fetchone()[0]
        drops = [s for (s,) in db.execute("SELECT seq FROM drops WHERE detail = 'drop_oldest: bytes quota full'")]
    assert total <= limit
    assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 9  # the newest survive
    assert drops == list(range(0, 40 - len(kept)))
    assert agent.terminate() == 0


def test_ttl_expires_old_pending_readings(rig: Rig, agent_factory: Any) -> None:
    (meter,) = make_meters(1)
    agent = agent_factory("--ttl-seconds", "1", cloud_url=_unreachable()).start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish([(meter_readings(meter.meter_id), reading_payload(meter, s)) for s in range(5)])
    wait_for(lambda: agent.count("SELECT count(*) FROM drops WHERE reason = 'expired'") == 5, timeout=15,
             message="5 expired drops")
    assert agent.count("SELECT count(*) FROM readings") == 0
    wait_for(lambda: agent.metrics().get('gridtokenx_edge_dropped_total{reason="expired"}') == 5, timeout=5,
             message="the expired counter")
    assert agent.terminate() == 0

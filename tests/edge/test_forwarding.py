"""Readings go meter → edge broker → agent (SQLite) → cloud broker → stand-in cloud, and are deleted on ack."""

from __future__ import annotations

from typing import Any

from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def test_readings_reach_the_cloud_and_leave_the_buffer(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(10)
    agent = agent_factory().start()
    with rig.standin() as cloud, Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 100))
        wait_for(lambda: cloud.seen.unique() == 1000, timeout=30, message="1000 keys at the cloud")
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 0, timeout=15,
                 message="an empty buffer")
        metrics = agent.metrics()
        assert metrics["gridtokenx_edge_received_total"] == 1000
        assert metrics["gridtokenx_edge_acked_total"] == 1000
        assert metrics['gridtokenx_edge_buffer_rows{state="pending"}'] == 0
        health = agent.health()
        assert health["healthy"] and health["cloud_connected"] and health["oldest_pending_age_s"] is None
        assert 0 <= health["last_cloud_ack_age_s"] < 30
        assert agent.terminate() == 0
    for m in meters:
        assert cloud.seen.order[m.meter_id] == list(range(100))
    assert agent.count("SELECT value FROM counters WHERE name = 'acked'") == 1000
    assert agent.count("SELECT count(*) FROM batches WHERE acked_at IS NULL") == 0
    assert agent.count("PRAGMA user_version") == 1

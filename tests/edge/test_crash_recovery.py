"""Must show: 10,000 readings, the agent kill -9'd three times while forwarding, the cloud broker
restarted once; the stand-in cloud still gets every (meter_id, seq), and the buffer ends empty."""

from __future__ import annotations

import threading
from typing import Any

from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def test_kill_9_three_times_and_a_cloud_broker_restart_lose_nothing(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(20)
    messages = interleaved(meters, 500)  # 10,000 readings
    agent = agent_factory("--batch-size", "200", "--window", "4").start()
    published = threading.Event()

    def publish() -> None:
        with Fleet(rig.fleet_url) as fleet:
            for i in range(0, len(messages), 500):  # a steady stream, so the kills land mid-forwarding
                fleet.publish(messages[i:i + 500])
        published.set()

    with rig.standin() as cloud:
        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            for threshold in (1500, 4000, 6500):
                wait_for(lambda t=threshold: cloud.seen.unique() >= t, timeout=60, message=f"{threshold} keys")
                agent.kill9()
                agent.start()
            wait_for(lambda: cloud.seen.unique() >= 8000, timeout=60, message="8000 keys")
            rig.cloud.restart()
            wait_for(published.is_set, timeout=60, message="the publisher to finish")
            wait_for(lambda: cloud.seen.unique() == 10_000, timeout=90,
                     message=f"all 10,000 keys (agent log: {agent.logs[-1]})")
            wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 0, timeout=30,
                     message="an empty buffer")
        finally:
            publisher.join(60)
        assert agent.terminate() == 0, agent.output()

    assert cloud.seen.keys == {(m.meter_id, s) for m in meters for s in range(500)}
    assert agent.count("SELECT count(*) FROM quarantine") == 0
    assert agent.count("SELECT count(*) FROM drops") == 0
    assert agent.starts == 4
    # The kills landed while batches were in flight: the restarted agents found rows to re-send.
    assert "left in flight by the previous run" in agent.output()
    print(f"cloud saw {cloud.seen.items} items in {cloud.seen.batches} batches for 10,000 keys")

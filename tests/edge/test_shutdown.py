"""SIGTERM in the middle of a stream drains and exits 0; the next start picks up where it stopped."""

from __future__ import annotations

import threading
from typing import Any

from gridtokenx.harness.loadgen import publish_all
from gridtokenx.harness.standin import interleaved, make_meters
from tests.edge.conftest import Rig
from tests.helpers import wait_for


def test_sigterm_mid_stream_drains_exits_0_and_loses_nothing(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(20)
    messages = interleaved(meters, 1000)  # 20,000 readings
    agent = agent_factory().start()
    with rig.standin() as cloud:
        publisher = threading.Thread(target=publish_all, args=(rig.fleet_url, messages),
                                     kwargs={"client_id": "shutdown-fleet"})
        publisher.start()
        try:
            wait_for(lambda: cloud.seen.unique() >= 2000, timeout=30, message="2000 keys at the cloud")
            assert agent.terminate() == 0
            assert "stopped cleanly" in agent.output()
            assert cloud.seen.unique() < 20_000  # it really stopped mid-stream
            agent.start()  # the broker kept what the agent had not acked
            wait_for(lambda: cloud.seen.unique() == 20_000, timeout=60, message="all 20,000 keys")
        finally:
            publisher.join(60)
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 0, timeout=15, message="an empty buffer")
        assert agent.terminate() == 0
    for m in meters:
        assert sorted(cloud.seen.order[m.meter_id]) == list(range(1000))

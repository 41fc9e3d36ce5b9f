"""Must show (issue 15): one meter floods 4 KB payloads at its maximum rate while 100 honest meters
publish one reading a second and the cloud is unreachable. Every reading the edge broker PUBACKed to
an honest meter is in the buffer (none lost, none dropped), the agent's RSS stays under 150 MB, the
flooder is cut off and recorded; when the cloud returns every honest reading is forwarded."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

from gridtokenx.harness.loadgen import flood
from gridtokenx.harness.standin import Fleet, make_meters, reading_payload
from protocol import topics
from runtime.config import BrokerURL
from tests.conftest import BrokerFactory
from tests.edge.conftest import GATEWAY, ROOT, Agent, Rig
from tests.helpers import wait_for

FLOODER = "mflood"
RSS_LIMIT_MB = 150.0


@pytest.fixture
def rig(broker_factory: BrokerFactory, tmp_path: Any) -> Rig:
    """tests/edge/conftest.py's rig (the agent_factory uses it) plus the flooding meter's account."""
    edge = broker_factory("edge", users={"sim-fleet": secrets.token_urlsafe(12),
                                         FLOODER: secrets.token_urlsafe(12)})
    cloud = broker_factory("cloud", users={GATEWAY: secrets.token_urlsafe(12)})
    return Rig(edge, cloud, tmp_path)


def _run_flood(rig: Rig, agent: Agent, seconds: float, *, qos: int = 1, honest_meters: int = 100) -> None:
    meters = make_meters(honest_meters, prefix="h")
    acked: set[tuple[str, int]] = set()
    rss_peak = [0.0]
    flooded = [0]
    stop = threading.Event()
    assert agent.proc is not None
    proc = psutil.Process(agent.proc.pid)

    def sample_rss() -> None:
        while not stop.wait(0.2):
            try:
                rss_peak[0] = max(rss_peak[0], proc.memory_info().rss / 1e6)
            except psutil.NoSuchProcess:
                rss_peak[0] = float("inf")  # the agent died
                return

    def flooder() -> None:
        url = BrokerURL.parse(rig.edge.url_for(FLOODER))
        flooded[0] = flood(url, topics.meter_readings(FLOODER), secrets.token_bytes(4000), client_id=FLOODER,
                           seconds=seconds, qos=qos)

    rig.cloud.stop()  # unreachable throughout the flood
    sampler = threading.Thread(target=sample_rss, daemon=True)
    attacker = threading.Thread(target=flooder, daemon=True)
    sampler.start()
    attacker.start()
    with Fleet(rig.fleet_url, client_id="honest-fleet") as fleet:
        started = time.monotonic()
        for seq in range(int(seconds)):
            batch = [(topics.meter_readings(m.meter_id), reading_payload(m, seq)) for m in meters]
            fleet.publish(batch, timeout=60)  # returns when the broker PUBACKed every one
            acked.update((m.meter_id, seq) for m in meters)
            # One reading a second per meter (no catch-up burst if a second ran late).
            time.sleep(max(0.0, started + seq + 1 - time.monotonic()))
    attacker.join(seconds + 60)
    # Every PUBACKed honest reading reaches the buffer (the agent drains the broker's queue).
    def buffered() -> set[tuple[str, int]]:
        return {(m, s) for m, s in agent.db().execute("SELECT meter_id, seq FROM readings WHERE meter_id != ?",
                                                        (FLOODER,))}
    try:
        wait_for(lambda: acked <= buffered(), timeout=120, interval=0.5,
                 message="every PUBACKed honest reading in the buffer")
    except AssertionError:
        missing = sorted(acked - buffered())
        raise AssertionError(f"{len(missing)} PUBACKed honest readings lost, e.g. {missing[:8]}; "
                             f"flooder published {flooded[0]}; agent log:\n{agent.output()[-3000:]}") from None
    stop.set()
    sampler.join(5)
    honest_drops = agent.count("SELECT count(*) FROM drops WHERE meter_id != ?", FLOODER)
    assert honest_drops == 0
    assert rss_peak[0] < RSS_LIMIT_MB, f"agent RSS peaked at {rss_peak[0]:.0f} MB"
    # The flooder is cut off and recorded: a row in meter_limits, a metric, the inspector's doctor names it.
    limited = agent.count("SELECT count(*) FROM meter_limits WHERE meter_id = ?", FLOODER)
    assert limited == 1, "the flooding meter is not recorded in meter_limits"
    metrics = agent.metrics()
    assert metrics.get('gridtokenx_edge_meter_limited_total{reason="rate_limited"}', 0) > 0
    doctor = subprocess.run([sys.executable, "-m", "gridtokenx", "edge", "inspect", "doctor", "--db",
                             str(agent.buffer), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    limits = {c["name"]: c for c in json.loads(doctor.stdout)}["meter limits"]
    assert limits["status"] == "FAIL" and FLOODER in limits["detail"], limits
    # The cloud returns: every honest reading is forwarded.
    rig.cloud.start()
    cloud = rig.standin().start()
    try:
        def at_cloud() -> set[tuple[str, int]]:
            with cloud.seen.lock:
                return set(cloud.seen.keys)

        wait_for(lambda: acked <= at_cloud(), timeout=120, interval=0.2, message="every honest reading at the cloud")
    finally:
        cloud.stop()
    print(f"\nflood {seconds:.0f} s (qos {qos}): flooder published {flooded[0]:,} x 4000 B; "
          f"{len(acked):,} honest readings PUBACKed, 0 lost; agent RSS peak {rss_peak[0]:.0f} MB")


def test_flood_of_4kb_payloads_costs_honest_meters_nothing(rig: Rig, agent_factory: Any) -> None:
    agent = agent_factory().start()
    _run_flood(rig, agent, 15)
    assert agent.terminate() == 0


def test_qos0_flood_costs_honest_meters_nothing(rig: Rig, agent_factory: Any) -> None:
    """Variant: QoS 0 publishes are not held back by the broker's inflight window at all."""
    agent = agent_factory().start()
    _run_flood(rig, agent, 10, qos=0)
    assert agent.terminate() == 0


@pytest.mark.slow
def test_flood_60s(rig: Rig, agent_factory: Any) -> None:
    agent = agent_factory().start()
    _run_flood(rig, agent, 60)
    assert agent.terminate() == 0

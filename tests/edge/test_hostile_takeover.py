"""Must show (issue 15): a meter's account tries to take over the edge agent's persistent session
by connecting with the agent's client id, on every listener (plain and TLS), clean and persistent,
while the agent runs and while it is down with readings queued for it. The session survives: every
reading PUBACKed to a meter reaches the buffer."""

from __future__ import annotations

import secrets
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gridtokenx.harness.brokers import Mosquitto, free_port, generate_dev_certs
from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from runtime.config import BrokerURL
from tests.conftest import BrokerFactory
from tests.edge.conftest import GATEWAY, Agent
from tests.helpers import wait_for

ATTACKER = "mevil"


def _attempt(edge: Mosquitto, port: int, client_id: str, *, clean: bool, ca: Path | None) -> None:
    """Connect as the attacker's meter account with `client_id`, wait for the CONNACK, disconnect."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    client.username_pw_set(ATTACKER, edge.users[ATTACKER])
    if ca is not None:
        client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    done = threading.Event()
    client.on_connect = lambda *_a: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "the attacker's CONNECT got no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()


def _agent(edge: Mosquitto, tmp: Path) -> Agent:
    port = free_port()
    return Agent(["--edge-broker-url", edge.url_for("edge-agent"), "--cloud-broker-url", "mqtt://127.0.0.1:1",
                  "--gateway-id", GATEWAY, "--buffer", str(tmp / "b.db"), "--metrics-port", str(port)],
                 tmp / "b.db", port, tmp / "agent")


def test_no_listener_lets_a_meter_take_over_the_agents_session(broker_factory: BrokerFactory,
                                                                tmp_path: Path) -> None:
    certs = generate_dev_certs(tmp_path / "certs")
    edge = broker_factory("edge", users={"sim-fleet": secrets.token_urlsafe(12), ATTACKER: secrets.token_urlsafe(12)},
                          tls_port=free_port(), certs_dir=certs)
    listeners = [(edge.port, None), (edge.tls_port, certs / "ca.crt")]
    agent = _agent(edge, tmp_path)
    # The ids an attacker would try: the agent's configured one and the one the broker gives it.
    ids = [f"edge-agent-{GATEWAY}", "edge-agent"]
    meters = make_meters(20)
    sent = 0
    try:
        agent.start()
        with Fleet(BrokerURL.parse(edge.url_for("sim-fleet"))) as fleet:
            # 1. While the agent is connected: 8 attempts, interleaved with readings.
            for i, (port, ca) in enumerate(listeners * 2):
                fleet.publish(interleaved(meters, 10, first_seq=sent))
                sent += 10
                _attempt(edge, port, ids[i % 2], clean=i % 2 == 0, ca=ca)
                _attempt(edge, port, ids[(i + 1) % 2], clean=i % 2 == 1, ca=ca)
            wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 20 * sent, timeout=30,
                     message="every reading in the buffer while the agent runs")
            assert "connection lost" not in agent.output(), "the agent's connection was taken over"
            # 2. While the agent is down, its session queues readings; takeover attempts must not wipe it.
            assert agent.terminate() == 0
            fleet.publish(interleaved(meters, 10, first_seq=sent))
            sent += 10
            for port, ca in listeners:
                for client_id in ids:
                    _attempt(edge, port, client_id, clean=True, ca=ca)
        agent.start()
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 20 * sent, timeout=30,
                 message="the readings queued while the agent was down")
        assert agent.terminate() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def test_a_meter_cannot_kick_another_meter_with_its_client_id(broker_factory: BrokerFactory,
                                                             tmp_path: Path) -> None:
    """Variant: the victim is another meter (its QoS 1 window would be cut each time)."""
    edge = broker_factory("edge", users={"m00000": secrets.token_urlsafe(12), ATTACKER: secrets.token_urlsafe(12)})
    kicked = threading.Event()
    victim = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="m00000", clean_session=True)
    victim.username_pw_set("m00000", edge.users["m00000"])
    connected = threading.Event()
    victim.on_connect = lambda *_a: connected.set()
    victim.on_disconnect = lambda *_a: kicked.set()
    victim.connect("127.0.0.1", edge.port)
    victim.loop_start()
    try:
        assert connected.wait(10)
        _attempt(edge, edge.port, "m00000", clean=True, ca=None)
        assert not kicked.wait(1.0), "the attacker's connection kicked the meter off"
    finally:
        victim.disconnect()
        victim.loop_stop()


def test_doctor_with_the_agents_credentials_never_takes_over_its_session(broker_factory: BrokerFactory,
                                                                         tmp_path: Path) -> None:
    """Variant: the technician runs `doctor` with the agent's environment (GRIDTOKENX_EDGE_BROKER_URL
    holds the agent's account). Since the broker makes the client id the username, a login as
    edge-agent would kick the agent and, with a clean session, wipe what is queued for it."""
    import json
    import subprocess
    import sys

    from tests.edge.conftest import ROOT

    edge = broker_factory("edge", users={"sim-fleet": secrets.token_urlsafe(12)})
    agent = _agent(edge, tmp_path)
    try:
        agent.start()
        out = subprocess.run([sys.executable, "-m", "gridtokenx", "edge", "inspect", "doctor", "--db",
                              str(agent.buffer),
                              "--edge-broker-url", edge.url_for("edge-agent"), "--json"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        checks = {c["name"]: c for c in json.loads(out.stdout)}
        assert checks["edge broker"]["status"] == "SKIP" and "take over" in checks["edge broker"]["detail"]
        assert checks["broker clock"]["status"] == "SKIP"
        with Fleet(BrokerURL.parse(edge.url_for("sim-fleet"))) as fleet:
            fleet.publish(interleaved(make_meters(5), 10))
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 50, timeout=30, message="50 readings")
        assert "connection lost" not in agent.output()
        assert agent.terminate() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()

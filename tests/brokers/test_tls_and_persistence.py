"""The TLS listener with the dev CA, and the edge broker's persistence promise across a restart."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from gridtokenx.brokers import free_port, generate_dev_certs
from tests.brokers.probe import CLOSED, Probe, Received


def test_tls_with_dev_ca_works_and_plain_to_tls_port_fails(broker_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = generate_dev_certs(tmp_path / "certs")
    broker = broker_factory("edge", {"m1": "p1"}, tls_port=free_port(), certs_dir=certs)
    assert broker.tls_port is not None

    with Probe(broker.host, broker.tls_port, "m1", "p1", ca=certs / "ca.crt") as tls:
        assert tls.connect() == 0
        assert tls.publish("meters/m1/readings", b"over tls") in (0, 0x10)  # accepted; nobody subscribed

    with Probe(broker.host, broker.tls_port, "m1", "p1") as plain:
        assert plain.connect() == CLOSED

    # The CA is what makes it work: a client trusting another CA refuses the server certificate.
    other = generate_dev_certs(tmp_path / "other-ca")
    context = ssl.create_default_context(cafile=str(other / "ca.crt"))
    with socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname=broker.host).close()

    # The plain listener still serves local development alongside.
    with Probe(broker.host, broker.port, "m1", "p1") as local:
        assert local.connect() == 0


def test_queued_reading_survives_a_graceful_broker_restart(broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("edge", {"m1": "p1"})
    session = {"client_id": "edge-agent-gw1", "v5": False, "clean": False}

    with Probe(broker.host, broker.port, "edge-agent", broker.users["edge-agent"], **session) as agent:  # type: ignore[arg-type]
        assert agent.connect() == 0
        assert agent.subscribe("meters/+/readings") == 1
    # The agent is offline; its persistent session queues the meter's QoS 1 reading.
    with Probe(broker.host, broker.port, "m1", "p1") as meter:
        assert meter.connect() == 0
        assert meter.publish("meters/m1/readings", b"reading while agent away") == 0

    broker.stop()  # SIGTERM: Mosquitto writes its persistence file
    assert (broker.workdir / "data" / "mosquitto.db").exists()
    broker.start()

    with Probe(broker.host, broker.port, "edge-agent", broker.users["edge-agent"], **session) as agent:  # type: ignore[arg-type]
        assert agent.connect() == 0
        assert agent.next_message() == Received("meters/m1/readings", b"reading while agent away")

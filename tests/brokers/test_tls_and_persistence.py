"""The TLS listener with the dev CA, and the edge broker's persistence promise across a restart."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from gridtokenx.harness.brokers import free_port, generate_client_cert, generate_dev_certs, render_config
from tests.brokers.probe import CLOSED, NOT_AUTHORIZED, Probe, Received


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


def test_on_the_tls_listener_a_meter_cannot_take_over_the_agents_session(broker_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = generate_dev_certs(tmp_path / "certs")
    broker = broker_factory("edge", {"m1": "p1"}, tls_port=free_port(), certs_dir=certs)
    assert broker.tls_port is not None
    session = {"client_id": "edge-agent-gw1", "v5": False, "clean": False}
    with Probe(broker.host, broker.port, "edge-agent", broker.users["edge-agent"], **session) as agent:  # type: ignore[arg-type]
        assert agent.connect() == 0
        assert agent.subscribe("meters/+/readings") == 1
    with Probe(broker.host, broker.tls_port, "m1", "p1", ca=certs / "ca.crt") as meter:
        assert meter.connect() == 0
        assert meter.publish("meters/m1/readings", b"queued for the agent") == 0
    # The meter claims the agent's client id: on 8883 its client id is its username, so the
    # agent's session (and the queued reading) is untouched.
    with Probe(broker.host, broker.tls_port, "m1", "p1", ca=certs / "ca.crt", **session) as thief:  # type: ignore[arg-type]
        assert thief.connect() == 0
        thief.barrier()
        assert thief.drained() == []
    with Probe(broker.host, broker.port, "edge-agent", broker.users["edge-agent"], **session) as agent:  # type: ignore[arg-type]
        assert agent.connect() == 0
        assert agent.next_message() == Received("meters/m1/readings", b"queued for the agent")


@pytest.mark.parametrize("role", ["edge", "cloud"])
def test_local_config_keeps_tls_settings_inside_the_tls_listener(role: str, tmp_path: Path) -> None:
    def sections(conf: Path) -> list[list[str]]:
        out: list[list[str]] = [[]]
        for line in conf.read_text().splitlines():
            if line.startswith("listener "):
                out.append([])
            if line and not line.startswith("#"):
                out[-1].append(line.split()[0])
        return out

    plain = sections(render_config(role, workdir=tmp_path / "plain", port=1234))  # type: ignore[arg-type]
    assert len(plain) == 2
    assert not {"cafile", "certfile", "keyfile"} & set(plain[0] + plain[1])
    tls = sections(render_config(role, workdir=tmp_path / "tls", port=1234, tls_port=1235,  # type: ignore[arg-type]
                                 certs_dir=tmp_path))
    assert len(tls) == 3
    assert {"cafile", "certfile", "keyfile", "use_username_as_clientid"} <= set(tls[2])
    if role == "edge":  # the client id is the username on every edge listener: no session takeover
        assert "use_username_as_clientid" in plain[1] and "use_username_as_clientid" in tls[1]
    else:
        assert "use_username_as_clientid" not in plain[1] + tls[1]  # the plain listener: client ids are free


def test_client_certificate_option_identifies_meters_by_certificate(broker_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The documented option for meters with secure elements: no password, the certificate's CN is
    the username, and the ACL applies to it as to any meter."""
    certs = generate_dev_certs(tmp_path / "certs")
    meter_cert = generate_client_cert(certs, "M-00001")
    broker = broker_factory("edge", {}, tls_port=free_port(), certs_dir=certs, client_certs=True)
    assert broker.tls_port is not None

    with Probe(broker.host, broker.port, "edge-agent", broker.users["edge-agent"]) as agent:
        assert agent.connect() == 0
        agent.subscribe("meters/+/readings")
        with Probe(broker.host, broker.tls_port, None, None, ca=certs / "ca.crt", cert=meter_cert) as meter:
            assert meter.connect() == 0
            assert meter.publish("meters/M-00002/readings", b"forged") == NOT_AUTHORIZED
            assert meter.publish("meters/M-00001/readings", b"by certificate") == 0
        assert agent.next_message() == Received("meters/M-00001/readings", b"by certificate")

    # Without a certificate the TLS handshake itself fails.
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    with socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError), context.wrap_socket(raw, server_hostname=broker.host) as tls:
        tls.recv(1)  # TLS 1.3 reports the server's refusal on the first read

"""Both hops over TLS (mqtts://) with the dev CA: readings still flow end to end."""

from __future__ import annotations

import secrets
from pathlib import Path

from gridtokenx.harness.brokers import free_port, generate_dev_certs
from gridtokenx.harness.standin import Fleet, StandinCloud, interleaved, make_meters
from runtime.config import BrokerURL
from tests.conftest import BrokerFactory
from tests.edge.conftest import GATEWAY, Agent
from tests.helpers import wait_for


def test_agent_over_tls_on_both_brokers(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    certs = generate_dev_certs(tmp_path / "certs")
    edge = broker_factory("edge", users={"sim-fleet": secrets.token_urlsafe(12)}, tls_port=free_port(),
                          certs_dir=certs)
    cloud = broker_factory("cloud", users={GATEWAY: secrets.token_urlsafe(12)}, tls_port=free_port(),
                           certs_dir=certs)
    ca = str(certs / "ca.crt")
    port = free_port()
    agent = Agent(["--edge-broker-url", f"mqtts://edge-agent:{edge.users['edge-agent']}@127.0.0.1:{edge.tls_port}",
                   "--cloud-broker-url", f"mqtts://{GATEWAY}:{cloud.users[GATEWAY]}@127.0.0.1:{cloud.tls_port}",
                   "--edge-broker-ca", ca, "--cloud-broker-ca", ca, "--gateway-id", GATEWAY,
                   "--buffer", str(tmp_path / "b.db"), "--metrics-port", str(port)],
                  tmp_path / "b.db", port, tmp_path / "agent")
    meters = make_meters(2)
    try:
        agent.start()
        with StandinCloud(BrokerURL.parse(cloud.url_for("cloud-consumer"))) as standin, \
                Fleet(BrokerURL.parse(edge.url_for("sim-fleet"))) as fleet:
            fleet.publish(interleaved(meters, 20))
            wait_for(lambda: standin.seen.unique() == 40, timeout=30, message="40 keys over TLS")
            metrics = agent.metrics()
            assert metrics["gridtokenx_edge_cloud_connected"] == 1 and metrics["gridtokenx_edge_edge_connected"] == 1
            assert agent.terminate() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()

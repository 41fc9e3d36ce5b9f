"""Access control on real Mosquitto with broker-config/: one test per rule of the ACLs.

Negative checks never wait for "nothing happened for a while": a legitimate sentinel message on the
same path, or a round trip on the receiving connection, proves the broker has already routed (or
dropped) the forged message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from gridtokenx.harness.brokers import Mosquitto
from tests.brokers.probe import BAD_CREDENTIALS, NOT_AUTHORIZED, Probe, Received

Connect = Callable[..., Probe]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(broker, user, **kw) → a connected Probe (CONNACK accepted), closed after the test."""
    with ExitStack() as stack:
        def make(broker: Mosquitto, user: str, **kwargs: object) -> Probe:
            probe = stack.enter_context(Probe(broker.host, broker.port, user, broker.users[user],
                                              **kwargs))  # type: ignore[arg-type]
            assert probe.connect() == 0, f"{user} was refused"
            return probe

        yield make


def test_anonymous_connect_refused(edge_broker: Mosquitto) -> None:
    with Probe(edge_broker.host, edge_broker.port, None, None) as anon:
        assert anon.connect() == NOT_AUTHORIZED


def test_wrong_password_refused(broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("edge", {"m1": "right-password"})
    with Probe(broker.host, broker.port, "m1", "wrong-password") as wrong:
        assert wrong.connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)  # 2.0.11 says 0x87
    with Probe(broker.host, broker.port, "m1", "right-password") as right:  # the control
        assert right.connect() == 0
    with Probe(broker.host, broker.port, "nobody", "right-password") as unknown:
        assert unknown.connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)


def test_meter_cannot_publish_for_another_meter(broker_factory, connect: Connect) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("edge", {"m1": "p1", "m2": "p2"})
    agent = connect(broker, "edge-agent")
    assert agent.subscribe("meters/+/readings") == 1
    m1 = connect(broker, "m1")
    assert m1.publish("meters/m2/readings", b"forged by m1") == NOT_AUTHORIZED
    assert m1.publish("meters/m1/readings", b"m1's own") == 0
    # Ordered on m1's connection: had the forged message been routed, it would arrive first.
    assert agent.next_message() == Received("meters/m1/readings", b"m1's own")
    agent.barrier()
    assert agent.drained() == []


def test_meter_cannot_read_any_readings(broker_factory, connect: Connect) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("edge", {"m1": "p1", "m2": "p2"})
    agent = connect(broker, "edge-agent")
    agent.subscribe("meters/+/readings")
    spy = connect(broker, "m1")
    for topic in ("meters/m2/readings", "meters/+/readings", "meters/m1/readings", "#"):
        code = spy.subscribe(topic)
        # Mosquitto 2.0 grants the SUBSCRIBE and enforces "read" per delivered message; a broker that
        # refuses it in the SUBACK (>= 0x80) satisfies the rule as well.
        assert code in (0, 1, NOT_AUTHORIZED)
    m2 = connect(broker, "m2")
    m1_self = spy  # one connection per account: the broker makes the client id the username
    assert m2.publish("meters/m2/readings", b"m2 reading") == 0
    assert m1_self.publish("meters/m1/readings", b"m1 reading") == 0
    received = {agent.next_message().payload, agent.next_message().payload}
    assert received == {b"m2 reading", b"m1 reading"}  # they were published and routed
    spy.barrier()
    assert spy.drained() == []


def test_gateway_cannot_publish_other_batches_or_any_acks(broker_factory, connect: Connect) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("cloud", {"gw1": "p1", "gw2": "p2"})
    consumer = connect(broker, "cloud-consumer")
    assert consumer.subscribe("$share/cloud/edge/+/batches") == 1
    gw2 = connect(broker, "gw2")
    assert gw2.subscribe("edge/gw2/acks") == 1
    gw1 = connect(broker, "gw1")
    assert gw1.subscribe("edge/gw1/acks") == 1
    assert gw1.subscribe("edge/gw2/acks") in (0, 1, NOT_AUTHORIZED)  # reading gw2's acks is denied below

    assert gw1.publish("edge/gw2/batches", b"batch forged as gw2") == NOT_AUTHORIZED
    assert gw1.publish("edge/gw2/acks", b"ack forged for gw2") == NOT_AUTHORIZED
    assert gw1.publish("edge/gw1/acks", b"ack forged for itself") == NOT_AUTHORIZED
    assert gw1.publish("edge/gw1/batches", b"gw1 batch") == 0
    assert consumer.next_message() == Received("edge/gw1/batches", b"gw1 batch")

    # Acks come only from the consumer; each gateway sees its own and nothing forged.
    assert consumer.publish("edge/gw2/acks", b"ack for gw2") == 0
    assert consumer.publish("edge/gw1/acks", b"ack for gw1") == 0
    assert gw2.next_message() == Received("edge/gw2/acks", b"ack for gw2")
    assert gw1.next_message() == Received("edge/gw1/acks", b"ack for gw1")
    for probe in (consumer, gw1, gw2):
        probe.barrier()
        assert probe.drained() == []


def test_only_the_consumer_may_write_acks_in_the_acl_file() -> None:
    """The static half of "nobody else writes acks": no pattern, and no user but cloud-consumer."""
    from gridtokenx.harness.brokers import CONFIG_ROOT

    writers: list[str] = []
    user = "*"  # lines before any `user` line, and `pattern` lines, apply to everyone
    for raw in (CONFIG_ROOT / "cloud" / "acl").read_text().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
            continue
        scope = "*" if words[0] == "pattern" else user
        access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
        if access in ("write", "readwrite") and topic.split("/")[-1] in ("acks", "#", "+"):
            writers.append(scope)
    assert writers == ["cloud-consumer"]


def test_fleet_user_publishes_for_any_meter_and_reads_nothing(broker_factory, connect: Connect) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("edge", {"sim-fleet": "fleet-pw"})
    agent = connect(broker, "edge-agent")
    agent.subscribe("meters/+/readings")
    fleet = connect(broker, "sim-fleet")
    fleet.subscribe("meters/+/readings")
    assert fleet.publish("meters/m7/readings", b"m7 via fleet") == 0
    assert fleet.publish("edge/gw1/batches", b"not a meter topic") == NOT_AUTHORIZED
    assert agent.next_message() == Received("meters/m7/readings", b"m7 via fleet")
    fleet.barrier()
    assert fleet.drained() == []


def test_service_users_cannot_publish_readings(edge_broker: Mosquitto, connect: Connect) -> None:
    agent = connect(edge_broker, "edge-agent")
    inspector = connect(edge_broker, "edge-inspector")
    assert agent.publish("meters/m1/readings", b"x") == NOT_AUTHORIZED
    assert inspector.publish("meters/m1/readings", b"x") == NOT_AUTHORIZED

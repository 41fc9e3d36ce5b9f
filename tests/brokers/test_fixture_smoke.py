"""The broker fixture runs real Mosquitto with access control on, and the shared subscription works."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gridtokenx.harness.brokers import Mosquitto


async def _roundtrip(broker: Mosquitto) -> list[bytes]:
    got: list[bytes] = []
    async with aiomqtt.Client(broker.host, broker.port, username="cloud-consumer",
                              password=broker.users["cloud-consumer"], identifier="consumer-1") as sub:
        await sub.subscribe("$share/cloud/edge/+/batches", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, username="gw1", password=broker.users["gw1"]) as pub:
            await pub.publish("edge/gw1/batches", b"hello", qos=1)
            await pub.publish("edge/gw2/batches", b"forged", qos=1)  # denied by the ACL: not gw2
            await pub.publish("edge/gw1/batches", b"again", qos=1)
        async with asyncio.timeout(5):
            async for message in sub.messages:
                got.append(bytes(message.payload))  # type: ignore[arg-type]
                if len(got) == 2:
                    break
    return got


async def test_shared_subscription_with_acl(broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory("cloud", {"gw1": "pw1"})
    assert (await _roundtrip(broker)) == [b"hello", b"again"]


def test_anonymous_refused(cloud_broker: Mosquitto) -> None:
    async def connect() -> None:
        async with aiomqtt.Client(cloud_broker.host, cloud_broker.port):
            pass

    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect())

"""Simulator fixtures: a key directory, an edge broker that knows its meters, a subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from gridtokenx.harness.brokers import Mosquitto
from protocol.keys import MeterKey
from protocol.topics import METER_READINGS_FILTER
from simulator.keystore import keygen, load_keys
from simulator.settings import MeterSettings, RunSettings, SigningSettings, SimSettings
from tests.conftest import BrokerFactory

SENTINEL = b"end-of-test"


@dataclass
class Fleet:
    keys_dir: Path
    keys: list[MeterKey]
    broker: Mosquitto
    fleet_password: str

    def capacities(self) -> dict[str, int]:
        return {k.meter_id: k.capacity_w for k in self.keys}

    def settings(self, **run: object) -> SimSettings:
        """Settings for this fleet; keyword arguments go to RunSettings, `meter=` / `broker=` sections too."""
        meter = run.pop("meter", MeterSettings())
        broker = run.pop("broker", None)
        faults = run.pop("faults", None)
        s = SimSettings(signing=SigningSettings(keys_dir=self.keys_dir), meter=meter,  # type: ignore[arg-type]
                        run=RunSettings(**{"drain_timeout": 10.0} | run))  # type: ignore[arg-type]
        s = dataclasses.replace(s, broker=dataclasses.replace(
            s.broker, url=self.broker.url))
        if broker is not None:
            s = dataclasses.replace(s, broker=dataclasses.replace(s.broker, **broker))  # type: ignore[arg-type]
        if faults is not None:
            s = dataclasses.replace(s, faults=faults)  # type: ignore[arg-type]
        return s


def make_fleet(tmp_path: Path, broker_factory: BrokerFactory, meters: int, types: str = "mix") -> Fleet:
    keys_dir = tmp_path / "keys"
    keygen(keys_dir, meters, types=types, seed=7)
    keys = load_keys(keys_dir)
    fleet_password = secrets.token_urlsafe(12)
    users = {k.meter_id: k.mqtt_password for k in keys} | {"sim-fleet": fleet_password}
    return Fleet(keys_dir, keys, broker_factory("edge", users=users, fleet_port=0), fleet_password)


@pytest.fixture
def fleet_factory(tmp_path: Path, broker_factory: BrokerFactory) -> Callable[..., Fleet]:
    return lambda meters, types="mix": make_fleet(tmp_path, broker_factory, meters, types)


@dataclass
class Received:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def subscriber(broker: Mosquitto) -> AsyncIterator[Received]:
    """Subscribe as the edge agent to every meter's readings; collects (topic, payload) in order."""
    received = Received()
    async with aiomqtt.Client("127.0.0.1", broker.port, username="edge-agent",
                              password=broker.users["edge-agent"], identifier="test-sub") as client:
        await client.subscribe(METER_READINGS_FILTER, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                payload = bytes(message.payload)  # type: ignore[arg-type]
                if payload == SENTINEL:
                    received.done.set()
                else:
                    received.messages.append((message.topic.value, payload))

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def finish(broker: Mosquitto, key: MeterKey, received: Received, timeout: float = 20.0) -> None:
    """Publish a sentinel after everything else: Mosquitto delivers to a subscriber in the order it
    accepted messages, so once the sentinel arrives, every earlier publish has arrived too."""
    async with aiomqtt.Client("127.0.0.1", broker.port, username=key.meter_id, password=key.mqtt_password,
                              identifier=f"{key.meter_id}-sentinel") as client:
        await client.publish(f"meters/{key.meter_id}/readings", SENTINEL, qos=1)
    await asyncio.wait_for(received.done.wait(), timeout)
    received.done.clear()

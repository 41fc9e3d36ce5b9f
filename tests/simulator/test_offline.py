"""A meter whose broker is down keeps a bounded buffer and sends it, in order, when it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable

import aiomqtt

from protocol.topics import METER_READINGS_FILTER
from protocol.wire import parse_payload
from simulator.fleet import run_fleet
from tests.helpers import async_wait_for
from tests.simulator.conftest import Fleet

PERSISTENT_SUB = "test-offline-sub"


async def test_offline_meters_buffer_bounded_and_send_in_order_on_reconnect(
        fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(2)
    broker = fleet.broker
    # 40 readings per meter while the broker is down; each meter keeps only the newest 10.
    settings = fleet.settings(speed=900 * 40, duration=1.0, max_buffer=10, drain_timeout=30.0)

    def client() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", broker.port, username="edge-agent", password=broker.users["edge-agent"],
                              identifier=PERSISTENT_SUB, clean_session=False)

    # A persistent session (like the edge agent's) collects what arrives while we are away.
    async with client() as sub:
        await sub.subscribe(METER_READINGS_FILTER, qos=1)
    broker.stop()
    run = asyncio.create_task(run_fleet(settings))

    async def produced() -> bool:
        if not settings.state_path.exists():
            return False
        with contextlib.closing(sqlite3.connect(f"file:{settings.state_path}?mode=ro", uri=True)) as db:
            try:
                row = db.execute("SELECT COUNT(*), MIN(seq) FROM meters").fetchone()
            except sqlite3.OperationalError:
                return False
        return bool(row == (2, 40))

    await async_wait_for(produced, timeout=20, message="40 intervals per meter while offline")
    broker.start()
    report = await run
    assert report.dropped == 2 * 30 and report.errors["buffer_full"] == 60
    assert report.acked == 2 * 10 and report.pending == 0
    assert report.errors["connect_failed"] >= 2

    got: dict[str, list[int]] = {}
    async with client() as sub:
        async def collect() -> None:
            async for message in sub.messages:
                reading = parse_payload(bytes(message.payload)).reading  # type: ignore[arg-type]
                got.setdefault(reading.meter_id, []).append(reading.seq)
                if sum(map(len, got.values())) == 20:
                    return
        await asyncio.wait_for(collect(), 20)
    assert got == {"M-00001": list(range(31, 41)), "M-00002": list(range(31, 41))}


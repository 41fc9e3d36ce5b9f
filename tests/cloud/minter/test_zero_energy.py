"""Readings that entitle nothing (0 Wh, a consumer's export) still end minted, and are counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from cloud.db import migrate
from cloud.minter import metrics
from cloud.minter.service import run_minter
from tests.cloud.minter.conftest import add_fleet, minter_settings
from tests.helpers import async_wait_for


def test_zero_energy_readings_are_minted_and_counted(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        await migrate(database_url)
        await add_fleet(database_url, meters=5, readings_per_meter=4, max_wh=0)
        before = metrics.MINTED_READINGS._value.get()
        settings = minter_settings(database_url, tmp_path / "chain", batch_size=100)
        stop = asyncio.Event()
        task = asyncio.create_task(run_minter(settings, stop))

        async def none_left() -> bool:
            conn = await asyncpg.connect(database_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted")) == 0
            finally:
                await conn.close()

        await async_wait_for(none_left, timeout=30, message="all zero-energy readings minted")
        stop.set()
        await task
        assert metrics.MINTED_READINGS._value.get() - before == 20

    asyncio.run(scenario())

"""TOKENIZATION_AUTO_MINT_ENABLED=false: the running minter mints nothing on its own; `cloud mint`
(served by that running minter, which holds the embedded chain) mints exactly what was asked."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from cloud.db import migrate
from cloud.mint_cli import mint, why
from cloud.minter.service import run_minter
from tests.cloud.minter.conftest import add_fleet, minter_settings


def test_auto_mint_off_until_manual_command(database_url: str, tmp_path: Path, monkeypatch: object) -> None:
    settings = minter_settings(database_url, tmp_path / "chain", auto_mint_enabled=False)
    fleet = asyncio.run(_setup(database_url))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            loop.run_until_complete(run_minter(settings, stop))
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # Ten polling intervals pass; nothing may be minted or even planned.
        deadline = time.monotonic() + 10 * settings.tokenization.polling_interval_secs
        while time.monotonic() < deadline:
            assert not errors, errors
            counts = asyncio.run(_counts(database_url))
            assert counts == (0, 0), counts
            time.sleep(0.1)

        meter = sorted(fleet.meters)[0]
        runner = CliRunner()
        env = {"GRIDTOKENX_CHAIN_STATE_DIR": str(tmp_path / "chain")}
        result = runner.invoke(mint, ["--meter", meter, "--database-url", database_url, "--json",
                                      "--timeout", "20"], env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert doc["mode"] == "request" and doc["readings_minted"] == 3, doc
        minted_meters = asyncio.run(_minted_meters(database_url))
        assert minted_meters == {meter}

        other = asyncio.run(_first_unminted(database_url))
        result = runner.invoke(why, [str(other), "--database-url", database_url], env=env | {
            "TOKENIZATION_AUTO_MINT_ENABLED": "false"})
        assert "auto-mint is off" in result.output, result.output
        result = runner.invoke(mint, ["--reading", str(other), "--database-url", database_url], env=env)
        assert result.exit_code == 0, result.output
        assert "minted 1 of 1 readings" in result.output
        assert asyncio.run(_counts(database_url))[0] == 4
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
    assert not errors, errors


async def _setup(dsn: str):  # type: ignore[no-untyped-def]
    await migrate(dsn)
    return await add_fleet(dsn, meters=4, readings_per_meter=3, seed=5)


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        minted = await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted")
        batches = await conn.fetchval("SELECT count(*) FROM mint_batches")
        return int(minted), int(batches)
    finally:
        await conn.close()


async def _minted_meters(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["meter_id"] for r in await conn.fetch("SELECT DISTINCT meter_id FROM meter_readings WHERE minted")}
    finally:
        await conn.close()


async def _first_unminted(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT min(id) FROM meter_readings WHERE NOT minted"))
    finally:
        await conn.close()

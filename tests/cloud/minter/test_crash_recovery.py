"""The minter dies after its batch landed but before Postgres heard of it (embedded chain).

The batch was written ahead, so on restart either the minter confirms it from the chain's persisted
signature history, or `reconcile` finds it by its memo and `--fix` records it. Never sent twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from cloud.chain.factory import open_backend
from cloud.db import migrate
from cloud.mint_cli import reconcile as reconcile_cmd
from cloud.minter import store
from cloud.minter.reconcile import reconcile
from cloud.minter.service import Minter
from cloud.settings import CloudSettings
from tests.cloud.minter.conftest import add_fleet, entitled_by_wallet, minter_settings


async def _land_without_recording(settings: CloudSettings) -> list[int]:
    """Plan + write ahead, broadcast, then 'crash' (close everything) before any confirmation."""
    backend = await open_backend(settings)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        minter = Minter(pool, backend, settings)
        ids = await minter.plan()
        for b in await store.open_batches(pool, minter.authority):
            assert b.tx_bytes is not None
            await backend.send(b.tx_bytes)
        return ids
    finally:
        await pool.close()
        await backend.close()


def test_restart_confirms_a_landed_batch_from_the_chain(database_url: str, tmp_path: Path) -> None:
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=1000)

    async def scenario() -> None:
        await migrate(database_url)
        fleet = await add_fleet(database_url, meters=12, readings_per_meter=3, wallets=12)
        ids = await _land_without_recording(settings)
        assert len(ids) == 2  # 12 wallets: 10 + 2
        backend = await open_backend(settings)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            minter = Minter(pool, backend, settings)
            assert await minter.drive() == 0
            assert await pool.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted") == 0
            assert await backend.token_supply() == sum(entitled_by_wallet(fleet).values())
            assert await pool.fetchval("SELECT max(sign_attempts) FROM mint_batches") == 1
            assert (await reconcile(database_url, backend)).clean
        finally:
            await pool.close()
            await backend.close()

    asyncio.run(scenario())


def test_reconcile_finds_and_fixes_a_landed_unrecorded_batch(database_url: str, tmp_path: Path) -> None:
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=1000)
    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=4, readings_per_meter=2, seed=21))
    asyncio.run(_land_without_recording(settings))

    runner = CliRunner()
    env = {"GRIDTOKENX_CHAIN_STATE_DIR": str(tmp_path / "chain"), "DATABASE_URL": database_url}
    result = runner.invoke(reconcile_cmd, [], env=env)
    assert result.exit_code == 1, result.output
    assert "landed but not recorded: batch 1" in result.output
    assert "DRIFT" in result.output
    result = runner.invoke(reconcile_cmd, ["--fix"], env=env)
    assert result.exit_code == 0, result.output
    assert "-> recorded" in result.output and "clean: no drift" in result.output
    result = runner.invoke(reconcile_cmd, ["--json"], env=env)
    assert result.exit_code == 0, result.output

    async def minted() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted"))
        finally:
            await conn.close()

    assert asyncio.run(minted()) == len(fleet.reading_ids)


def test_invalid_wallet_is_dead_lettered_not_fatal(database_url: str, tmp_path: Path) -> None:
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=1000)

    async def scenario() -> None:
        await migrate(database_url)
        good = await add_fleet(database_url, meters=2, readings_per_meter=2, seed=31)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w)"
                               " VALUES ('m-bad', 'k', 'not-a-wallet', 'solar', 1000)")
            bad_id = await conn.fetchval(
                "INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh,"
                " format, payload, signature) VALUES ('m-bad', 1, 'not-a-wallet', now(), now(), 500, 'v1',"
                " '\\x00'::bytea, 's') RETURNING id")
            backend = await open_backend(settings)
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            assert pool is not None
            try:
                minter = Minter(pool, backend, settings)
                await minter.plan()
                assert await minter.drive() == 0
            finally:
                await pool.close()
                await backend.close()
            row = await conn.fetchrow("SELECT dead_lettered, error_message FROM minting_retry_queue"
                                      " WHERE reading_id = $1", bad_id)
            assert row["dead_lettered"] and "not a valid Solana public key" in row["error_message"]
            minted = await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted")
            assert minted == len(good.reading_ids)
        finally:
            await conn.close()

    asyncio.run(scenario())

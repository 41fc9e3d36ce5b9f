"""Issue 20: the minter writes a reading row once, when its batch confirms (migration 055).

Planning writes the batch and locks the meters' ledgers, not the readings: a reading's row version
(`xmin`) is the ingest insert's until confirmation. "In a batch" is read from the open batches
(`open_batch_readings`), by `cloud why` and by the API alike, and a meter with an open batch is not
claimed again, even for readings that arrived after its batch was planned.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from cloud.chain.factory import open_backend
from cloud.db import migrate
from cloud.minter import store
from cloud.minter.admin import explain
from cloud.minter.service import Minter
from cloud.settings import CloudSettings
from tests.cloud.minter.conftest import Fleet, add_fleet, add_readings, entitled_by_wallet, minter_settings


@asynccontextmanager
async def _minting(database_url: str, tmp_path: Path, *, meters: int, readings_per_meter: int,
                   seed: int) -> AsyncIterator[tuple[CloudSettings, Fleet, Minter, asyncpg.Pool]]:
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=1000)
    await migrate(database_url)
    fleet = await add_fleet(database_url, meters=meters, readings_per_meter=readings_per_meter, seed=seed)
    backend = await open_backend(settings)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        yield settings, fleet, Minter(pool, backend, settings), pool
    finally:
        await pool.close()
        await backend.close()


async def test_planning_leaves_readings_untouched_and_confirmation_writes_them_once(database_url: str,
                                                                                     tmp_path: Path) -> None:
    async with _minting(database_url, tmp_path, meters=3, readings_per_meter=2, seed=31) as (settings, fleet, minter,
                                                                                            pool):
        before = {r["id"]: r["xmin"] for r in await pool.fetch("SELECT id, xmin::text FROM meter_readings")}
        [batch_id] = await minter.plan()
        after = {r["id"]: r["xmin"] for r in await pool.fetch("SELECT id, xmin::text FROM meter_readings")}
        assert after == before, "planning wrote reading rows"

        # In the open batch: `cloud why` and the view say so; nothing is minted yet.
        rid = fleet.reading_ids[0]
        answer = await explain(settings, str(rid))
        assert answer.state == "in_batch" and answer.detail["batch_id"] == batch_id, answer
        held = {r["reading_id"] for r in await pool.fetch("SELECT reading_id FROM open_batch_readings")}
        assert held == set(fleet.reading_ids)

        # New readings of those meters wait behind the open batch: no second batch for the same meters.
        async with pool.acquire() as conn:
            late = await add_readings(conn, fleet.meters, 1, random.Random(5), 5000, start_seq=3)
        assert await minter.plan() == []

        assert await minter.drive() == 0
        rows = await pool.fetch("SELECT id, minted, mint_batch_id, mint_tx_signature, xmin::text FROM meter_readings"
                                " WHERE id = ANY($1)", fleet.reading_ids)
        sig = await pool.fetchval("SELECT signature FROM mint_batches WHERE id = $1", batch_id)
        assert all(r["minted"] and r["mint_batch_id"] == batch_id and r["mint_tx_signature"] == sig for r in rows)
        assert await pool.fetchval("SELECT count(*) FROM open_batch_readings") == 0
        answer = await explain(settings, str(rid))
        assert answer.state == "minted" and answer.detail["batch_id"] == batch_id, answer

        # The late readings are minted next, and the totals are exactly the entitlement.
        assert len(await minter.plan()) == 1
        assert await minter.drive() == 0
        assert await pool.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted") == 0
        wh = {m: fleet.wh[m] + late.wh[m] for m in fleet.meters}
        total = type(fleet)(fleet.meters, wh, [])
        assert await minter.backend.token_supply() == sum(entitled_by_wallet(total).values())


async def test_a_released_batch_leaves_its_readings_claimable(database_url: str, tmp_path: Path) -> None:
    async with _minting(database_url, tmp_path, meters=2, readings_per_meter=1, seed=32) as (settings, fleet, minter,
                                                                                            pool):
        [batch_id] = await minter.plan()
        sig = await pool.fetchval("SELECT signature FROM mint_batches WHERE id = $1", batch_id)
        decisions = await store.release(pool, batch_id, sig, status="failed", error="test: never sent",
                                        settings=settings.tokenization)
        assert decisions is not None and len(decisions) == len(fleet.reading_ids)
        assert await pool.fetchval("SELECT count(*) FROM open_batch_readings") == 0
        # Retry time has come (manual requests ignore it): the same readings are claimed again.
        again = await minter.plan(manual=True)
        assert len(again) == 1 and again[0] != batch_id
        held = {r["reading_id"] for r in await pool.fetch("SELECT reading_id FROM open_batch_readings")}
        assert held == set(fleet.reading_ids)


async def test_a_pass_confirms_its_batches_in_one_transaction_and_skips_ones_already_confirmed(
        database_url: str, tmp_path: Path) -> None:
    async with _minting(database_url, tmp_path, meters=12, readings_per_meter=1, seed=33) as (_settings, _fleet, minter,
                                                                                             pool):
        first, second = await minter.plan()  # 12 wallets: two transactions
        batches = {b.id: b for b in await store.open_batches(pool, minter.authority)}
        for b in batches.values():
            assert b.tx_bytes is not None
            await minter.backend.send(b.tx_bytes)
        sig1, sig2 = batches[first].signature, batches[second].signature
        assert sig1 is not None and sig2 is not None
        assert await store.confirm(pool, first, sig1, 1, None) is not None  # someone else was quicker
        done = await store.confirm_many(pool, [(first, sig1, 1, None), (second, sig2, 1, None)])
        assert done[0] is None and done[1]
        assert await pool.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted") == 0
        assert await minter.drive() == 0

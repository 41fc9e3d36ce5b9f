"""Minting against localnet as a real cluster would treat it: congestion that drops transactions paying
no priority fee, confirmation by signatureSubscribe with the socket cut and restored mid-run, and a
wallet's balance listed the way wallet tools list it (getTokenAccountsByOwner)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from solana.rpc.async_api import AsyncClient
from solana.rpc.models import TokenAccountOpts
from solders.pubkey import Pubkey

from cloud.chain.base import ChainBackend
from cloud.chain.factory import open_backend
from cloud.chain.tokens import decode_token_amount
from cloud.chain.tx import ComputeBudget
from cloud.chain.ws import SignatureWatcher
from cloud.db import create_pool, migrate
from cloud.minter.reconcile import reconcile
from cloud.minter.service import Minter
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from tests.cloud.chain.conftest import LocalnetFactory
from tests.cloud.minter.conftest import Fleet, add_fleet, add_readings, entitled_by_wallet
from tests.helpers import async_wait_for


def _settings(url: str, state: Path, database_url: str, **chain: object) -> CloudSettings:
    tok = TokenizationSettings(polling_interval_secs=0.2, resign_attempts=1, max_retry_attempts=1000,
                               initial_retry_delay_minutes=0.002, max_retry_delay_minutes=0.005)
    base = ChainSettings(backend="rpc", rpc_url=url, ws_url=url.replace("http://", "ws://"), state_dir=state,
                         confirm_poll_secs=0.1, rebroadcast_secs=0.3, rpc_timeout_secs=3)
    return CloudSettings(database_url=database_url, tokenization=tok,
                         chain=dataclasses.replace(base, **chain))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _minter(settings: CloudSettings, *, subscribe: bool = True) -> AsyncIterator[Minter]:
    """A running minter (its own backend, pool and watcher), stopped and drained on exit."""
    backend = await open_backend(settings)
    pool = await create_pool(settings.database_url)
    watcher = SignatureWatcher(settings.chain.ws_url) if subscribe else None
    if watcher is not None:
        watcher.start()
        assert await watcher.wait_connected(10)
    minter = Minter(pool, backend, settings, watcher)
    stop = asyncio.Event()
    task = asyncio.create_task(minter.run(stop))
    try:
        yield minter
    finally:
        stop.set()
        await task
        if watcher is not None:
            await watcher.close()
        await pool.close()
        await backend.close()


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _assert_exactly_once(dsn: str, backend: ChainBackend, fleet: Fleet) -> None:
    """Every reading minted by exactly one confirmed batch; supply and wallets exact; reconcile clean."""
    assert await _count(dsn, "SELECT count(*) FROM meter_readings WHERE NOT minted") == 0
    assert await _count(dsn, "SELECT count(*) FROM (SELECT rid FROM mint_batches b, unnest(b.reading_ids) rid"
                             " WHERE b.status = 'confirmed' GROUP BY rid HAVING count(*) > 1) d") == 0
    expected = entitled_by_wallet(fleet)
    assert await backend.token_supply() == sum(expected.values()), "supply != entitled: a double or lost mint"
    report = await reconcile(dsn, backend)
    assert report.clean, report
    assert report.entitled_by_wallet == expected


def _merge(a: Fleet, b: Fleet) -> Fleet:
    wh = dict(a.wh)
    for m, e in b.wh.items():
        wh[m] = wh.get(m, 0) + e
    return Fleet(a.meters, wh, a.reading_ids + b.reading_ids)


async def test_congestion_drops_unpaid_mints_and_dynamic_fees_land_every_reading(
        database_url: str, tmp_path: Path, localnet_factory: LocalnetFactory) -> None:
    floor = 5000
    url = localnet_factory("--congestion-price", str(floor), "--blockhash-ttl", "8", "--slot-ms", "100")
    state = tmp_path / "chain"

    await migrate(database_url)
    fleet = await add_fleet(database_url, meters=12, readings_per_meter=2, wallets=10, seed=19)
    # The mint is created paying the congestion price (mint creation follows the same fee rule).
    await (await open_backend(_settings(url, state, database_url, priority_fee_mode="dynamic"))).close()
    # No priority fee, then a dynamic fee whose cap is below the floor: neither ever lands. Each runs
    # until its batches have expired unseen, been re-signed and gone back to the retry queue.
    for mode, cap in (("none", 100_000), ("dynamic", floor - 1)):
        released = await _count(database_url, "SELECT count(*) FROM mint_batches WHERE status = 'expired'")
        async with _minter(_settings(url, state, database_url, priority_fee_mode=mode,
                                     priority_fee_max_micro_lamports=cap)):
            await async_wait_for(lambda r=released: _expired_more_than(database_url, r),  # type: ignore[misc]
                                 timeout=60, message=f"{mode} batches expired unlanded")
        assert await _count(database_url, "SELECT count(*) FROM mint_batches WHERE status = 'expired'") \
            > released
        assert await _count(database_url, "SELECT count(*) FROM meter_readings WHERE minted") == 0
        assert await _count(database_url, "SELECT count(*) FROM mint_batches WHERE status = 'confirmed'") == 0
    # Dynamic fees read the congestion from getRecentPrioritizationFees and every reading mints.
    async with _minter(_settings(url, state, database_url, priority_fee_mode="dynamic")) as minter:
        await async_wait_for(lambda: _unminted_is_zero(database_url), timeout=90, interval=0.2,
                             message="every reading minted with dynamic fees")
        await _assert_exactly_once(database_url, minter.backend, fleet)
        assert minter.budget.unit_price == floor
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT compute_unit_limit, compute_unit_price, fee_lamports, cardinality(wallets)"
                                " AS wallets FROM mint_batches WHERE status = 'confirmed'")
    finally:
        await conn.close()
    assert rows and all(r["compute_unit_price"] >= floor for r in rows)
    for r in rows:  # the fee recorded is the one the runtime charges for that budget
        assert r["fee_lamports"] == ComputeBudget(r["compute_unit_limit"], r["compute_unit_price"]).fee()
        assert 0 < r["compute_unit_limit"] < 1_400_000 / 2
    assert max(r["wallets"] for r in rows) == 9  # packing stays maximal with the budget instructions



async def _expired_more_than(dsn: str, n: int) -> bool:
    return await _count(dsn, "SELECT count(*) FROM mint_batches WHERE status = 'expired'") > n


async def _unminted_is_zero(dsn: str) -> bool:
    return await _count(dsn, "SELECT count(*) FROM meter_readings WHERE NOT minted") == 0


def _ws_fault(url: str, up: bool) -> None:
    req = urllib.request.Request(f"{url}/faults/ws", json.dumps({"up": up}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["up"] is up


async def test_websocket_cut_and_restored_mid_run_confirms_every_reading_once(
        database_url: str, tmp_path: Path, localnet_factory: LocalnetFactory) -> None:
    url = localnet_factory("--status-delay", "0.2", "--slot-ms", "100", "--blockhash-ttl", "50")
    settings = _settings(url, tmp_path / "chain", database_url)

    await migrate(database_url)
    fleet = await add_fleet(database_url, meters=10, readings_per_meter=2, wallets=6, seed=23)
    async with _minter(settings) as minter:
        watcher = minter.watcher
        assert watcher is not None
        await async_wait_for(lambda: _unminted_is_zero(database_url), timeout=60, message="wave 1 minted")
        by_subscription = len(watcher.landed) + watcher.notifications
        assert by_subscription > 0, "wave 1 was confirmed by notifications"
        _ws_fault(url, up=False)  # the socket drops mid-run
        await async_wait_for(lambda: _not(watcher.healthy), timeout=10, message="socket seen lost")
        conn = await asyncpg.connect(database_url)
        try:
            fleet = _merge(fleet, await add_readings(conn, fleet.meters, 2, random.Random(2), 5000, start_seq=3))
        finally:
            await conn.close()
        await async_wait_for(lambda: _unminted_is_zero(database_url), timeout=60,
                             message="wave 2 minted by polling while the socket is down")
        assert not watcher.healthy
        generation = watcher.generation
        notes = watcher.notifications
        _ws_fault(url, up=True)
        await async_wait_for(lambda: _is(watcher.healthy), timeout=30, message="socket back")
        assert watcher.generation == generation + 1
        conn = await asyncpg.connect(database_url)
        try:
            fleet = _merge(fleet, await add_readings(conn, fleet.meters, 2, random.Random(3), 5000, start_seq=5))
        finally:
            await conn.close()
        await async_wait_for(lambda: _unminted_is_zero(database_url), timeout=60, message="wave 3 minted")
        assert watcher.notifications > notes, "back to subscription after the socket returned"
        await _assert_exactly_once(database_url, minter.backend, fleet)



async def _not(value: bool) -> bool:
    return not value


async def _is(value: bool) -> bool:
    return value


async def test_wallet_balance_from_get_token_accounts_by_owner_equals_reconcile(
        database_url: str, tmp_path: Path, localnet_factory: LocalnetFactory) -> None:
    url = localnet_factory()
    settings = _settings(url, tmp_path / "chain", database_url)

    await migrate(database_url)
    fleet = await add_fleet(database_url, meters=8, readings_per_meter=2, wallets=5, seed=29)
    async with _minter(settings) as minter:
        await async_wait_for(lambda: _unminted_is_zero(database_url), timeout=60, message="all minted")
        backend = minter.backend
        report = await reconcile(database_url, backend)
        assert report.clean, report
        identity = backend.identity
        client = AsyncClient(url)
        try:
            for wallet in sorted(set(fleet.meters.values())):
                owner = Pubkey.from_string(wallet)
                # jsonParsed, what `spl-token accounts` shows (solana-py 0.41 has no separate token client)
                parsed = await client.get_token_accounts_by_owner_json_parsed(
                    owner, TokenAccountOpts(mint=identity.mint))
                ui = sum(int(a.account.data.parsed["info"]["tokenAmount"]["amount"]) for a in parsed.value)
                # base64, decoded here, filtered by the token program rather than the mint
                raw = await client.get_token_accounts_by_owner(owner, TokenAccountOpts(
                    program_id=identity.token_program))
                b64 = sum(decode_token_amount(bytes(a.account.data)) for a in raw.value)
                assert ui == b64 == report.chain_by_wallet[wallet] == entitled_by_wallet(fleet)[wallet] > 0
            nobody = await client.get_token_accounts_by_owner_json_parsed(
                identity.mint, TokenAccountOpts(mint=identity.mint))
            assert nobody.value == []
        finally:
            await client.close()


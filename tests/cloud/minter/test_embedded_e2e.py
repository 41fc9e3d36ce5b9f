"""Readings inserted in Postgres are minted on the embedded chain, exactly, and survive a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from solders.pubkey import Pubkey

from cloud.chain.embedded import EmbeddedBackend
from cloud.chain.factory import open_backend
from cloud.chain.tx import token_account
from cloud.db import migrate
from cloud.minter.reconcile import reconcile
from cloud.minter.service import run_minter
from tests.cloud.minter.conftest import add_fleet, entitled_by_wallet, minter_settings, unminted
from tests.helpers import async_wait_for


def test_embedded_mint_is_exact_and_reconciles(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        await migrate(database_url)
        # 40 meters on 25 wallets (some wallets own two meters), 6 readings each.
        fleet = await add_fleet(database_url, meters=40, readings_per_meter=6, wallets=25)
        settings = minter_settings(database_url, tmp_path / "chain", batch_size=100)
        stop = asyncio.Event()
        task = asyncio.create_task(run_minter(settings, stop))
        await async_wait_for(lambda: _none_left(database_url, task), timeout=30, message="all readings minted")
        stop.set()
        await task

        # A fresh process view of the chain: restored from the state dir's journal.
        backend = await open_backend(settings)
        try:
            assert isinstance(backend, EmbeddedBackend)
            expected = entitled_by_wallet(fleet)
            for wallet, amount in expected.items():
                ata = token_account(backend.identity, Pubkey.from_string(wallet))
                assert await backend.token_balance(ata) == amount, wallet
            assert await backend.token_supply() == sum(expected.values())
            report = await reconcile(database_url, backend)
            assert report.clean, report
            assert report.unminted_readings == 0 and report.entitlement_drift == 0
            assert report.entitled_by_wallet == expected
        finally:
            await backend.close()

    asyncio.run(scenario())


async def _none_left(dsn: str, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # surface the minter's exception instead of a timeout
        raise AssertionError("minter stopped early")
    return await unminted(dsn) == 0

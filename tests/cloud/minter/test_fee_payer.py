"""The mint authority pays every fee and every new token account's rent. When it cannot pay a batch the
minter says so once, sends nothing, and resumes by itself once funded; the balance and the batches it
still pays are metrics, with an alert below GRIDTOKENX_FEE_PAYER_MIN_BATCHES."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from solders.account import Account
from solders.system_program import ID as SYSTEM_PROGRAM_ID

from cloud.chain.embedded import EmbeddedBackend
from cloud.chain.factory import open_backend
from cloud.db import create_pool, migrate
from cloud.minter.service import Minter
from tests.cloud.minter.conftest import add_fleet, minter_settings, unminted
from tests.helpers import async_wait_for


def _metric(metric: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(metric, labels)
    assert value is not None, metric
    return value


def test_unfunded_fee_payer_refuses_once_then_resumes(database_url: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        await migrate(database_url)
        await add_fleet(database_url, meters=6, readings_per_meter=2, wallets=4, seed=31)
        settings = minter_settings(database_url, tmp_path / "chain")
        backend = await open_backend(settings)
        assert isinstance(backend, EmbeddedBackend)
        authority = backend.identity.authority.pubkey()
        # 1 SOL-cent: fees yes, but not the rent of nine new token accounts.
        backend.ledger.svm.set_account(authority, Account(10_000_000, b"", SYSTEM_PROGRAM_ID))
        pool = await create_pool(database_url)
        minter = Minter(pool, backend, settings)
        stop = asyncio.Event()
        task = asyncio.create_task(minter.run(stop))
        try:
            await async_wait_for(lambda: _planned_passes(minter, 5), timeout=30, message="several polls")
            assert await pool.fetchval("SELECT count(*) FROM mint_batches") == 0  # nothing signed or sent
            assert await unminted(database_url) == 12
            refusals = [r for r in caplog.records if "will not send" in r.getMessage()]
            assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR  # said once
            assert _metric("gridtokenx_fee_payer_lamports") == 10_000_000
            assert _metric("gridtokenx_fee_payer_batches_left") == 0
            assert _metric("gridtokenx_alert", name="fee_payer_low") == 1
            await backend.airdrop(authority, 10**10)  # funded: it resumes without a restart
            await async_wait_for(lambda: _all_minted(database_url), timeout=30, message="minted after funding")
            assert any("funded again" in r.getMessage() for r in caplog.records)
            assert _metric("gridtokenx_fee_payer_batches_left") > 100
            assert _metric("gridtokenx_alert", name="fee_payer_low") == 0
        finally:
            stop.set()
            await task
            await pool.close()
            await backend.close()

    asyncio.run(scenario())


async def _planned_passes(minter: Minter, n: int) -> bool:
    return minter.budget.fee_payer_checks >= n


async def _all_minted(dsn: str) -> bool:
    return await unminted(dsn) == 0

"""The mint's authority moves on chain while the minter runs (started with the right one): every batch
lands with an on-chain error, readings follow the backoff schedule, then are dead-lettered with an
alert; after the fix, a manual mint of a dead-lettered reading succeeds. A minter *started* with an
authority that is not the mint's refuses to start (tests/cloud/minter/test_economics.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import spl.token.instructions as spl
from click.testing import CliRunner
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.transaction import VersionedTransaction
from spl.token.models import AuthorityType, SetAuthorityParams

from cloud.chain.base import ChainBackend
from cloud.chain.factory import open_backend
from cloud.db import create_pool, migrate
from cloud.mint_cli import status, why
from cloud.minter import metrics
from cloud.minter.admin import manual_mint
from cloud.minter.retry import backoff_seconds
from cloud.minter.service import Minter
from tests.cloud.minter.conftest import add_fleet, minter_settings
from tests.helpers import async_wait_for

MAX_ATTEMPTS = 4
INITIAL_MIN = 0.003  # 0.18 s
CAP_MIN = 0.008  # 0.48 s


def test_backoff_schedule_doubles_and_caps() -> None:
    delays = [backoff_seconds(n, initial_minutes=5, max_minutes=60) for n in range(1, 8)]
    assert delays == [300, 600, 1200, 2400, 3600, 3600, 3600]


def test_wrong_authority_retries_with_backoff_then_dead_letters(database_url: str, tmp_path: Path) -> None:
    state = tmp_path / "chain"
    settings = minter_settings(database_url, state, batch_size=100, max_retry_attempts=MAX_ATTEMPTS,
                               initial_retry_delay_minutes=INITIAL_MIN, max_retry_delay_minutes=CAP_MIN)

    async def scenario() -> None:
        await migrate(database_url)
        fleet = await add_fleet(database_url, meters=3, readings_per_meter=2, seed=11)
        # The minter starts with the right authority; then the mint authority moves to a stranger.
        backend = await open_backend(settings)
        good = backend.identity.authority
        stranger = Keypair()
        await backend.airdrop(stranger.pubkey(), 10**9)
        pool = await create_pool(database_url)
        minter = Minter(pool, backend, settings)
        await _set_authority(backend, good, stranger)
        dead_before = metrics.DEAD_LETTER._value.get()

        stop = asyncio.Event()
        task = asyncio.create_task(minter.run(stop))
        conn = await asyncpg.connect(database_url)
        try:
            async def all_dead() -> bool:
                assert not task.done(), "minter stopped"
                n = await conn.fetchval("SELECT count(*) FROM minting_retry_queue WHERE dead_lettered")
                return bool(n == len(fleet.reading_ids))
            await async_wait_for(all_dead, timeout=30, message="every reading dead-lettered")
            stop.set()
            await task

            rows = await conn.fetch("SELECT attempts, error_message FROM minting_retry_queue")
            assert {r["attempts"] for r in rows} == {MAX_ATTEMPTS}
            assert all("landed with error" in r["error_message"] for r in rows)
            assert await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted") == 0
            # The schedule: the k-th retry starts no earlier than backoff(k) after the k-th failure.
            rid = fleet.reading_ids[0]
            batches = await conn.fetch("SELECT created_at, updated_at, status FROM mint_batches"
                                       " WHERE $1 = ANY(reading_ids) ORDER BY id", rid)
            assert [b["status"] for b in batches] == ["failed"] * MAX_ATTEMPTS
            for k in range(1, MAX_ATTEMPTS):
                gap = (batches[k]["created_at"] - batches[k - 1]["updated_at"]).total_seconds()
                assert gap >= backoff_seconds(k, initial_minutes=INITIAL_MIN, max_minutes=CAP_MIN) - 0.01, (k, gap)
            assert metrics.DEAD_LETTER._value.get() - dead_before == len(fleet.reading_ids)
            assert metrics.ALERT.labels(name="dead_letter")._value.get() == 1
            await _set_authority(backend, stranger, good)  # the fix
        finally:
            await conn.close()
            await pool.close()
            await backend.close()

    asyncio.run(scenario())
    runner = CliRunner()
    result = runner.invoke(status, ["--database-url", database_url, "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.output)["alerts"]["dead_letter"] is True
    first = asyncio.run(_first_id(database_url))
    result = runner.invoke(why, [str(first), "--database-url", database_url])
    assert "dead-lettered after 4 failed attempts" in result.output, result.output

    # Fixed; a manual mint takes the dead-lettered reading.
    outcome = asyncio.run(manual_mint(settings, reading_ids=[first], meter_id=None, wait_secs=20))
    assert outcome.complete, outcome.describe()
    result = runner.invoke(why, [str(first), "--database-url", database_url])
    assert "was minted in tx" in result.output, result.output


async def _set_authority(backend: ChainBackend, current: Keypair, new: Keypair) -> None:
    mint = backend.identity.mint
    ix = spl.set_authority(SetAuthorityParams(program_id=backend.identity.token_program, account=mint,
                                              authority=AuthorityType.MINT_TOKENS,
                                              current_authority=current.pubkey(), new_authority=new.pubkey()))
    recent = await backend.latest_blockhash()
    message = MessageV0.try_compile(current.pubkey(), [ix], [], recent.blockhash)
    await backend.send(bytes(VersionedTransaction(message, [current])))


async def _first_id(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT min(id) FROM meter_readings"))
    finally:
        await conn.close()


def test_retry_disabled_sends_failures_to_manual_review_at_once() -> None:
    from cloud.minter.retry import after_failure
    from cloud.settings import TokenizationSettings

    on = after_failure(0, TokenizationSettings())
    assert (on.attempts, on.delay_seconds, on.dead_letter) == (1, 300.0, False)
    assert after_failure(9, TokenizationSettings()).dead_letter  # the 10th failure: TOKENIZATION_MAX_RETRY_ATTEMPTS
    off = after_failure(0, TokenizationSettings(retry_enabled=False))
    assert off.dead_letter

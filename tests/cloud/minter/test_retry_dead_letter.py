"""A real backend configured wrong (the mint authority keypair is not the mint's authority): every batch
lands with an on-chain error, readings follow the backoff schedule, then are dead-lettered with an
alert; after the fix, a manual mint of a dead-lettered reading succeeds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from click.testing import CliRunner
from solders.keypair import Keypair

from cloud.chain.factory import open_backend
from cloud.chain.identity import AUTHORITY_FILE
from cloud.db import migrate
from cloud.mint_cli import status, why
from cloud.minter import metrics
from cloud.minter.admin import manual_mint
from cloud.minter.retry import backoff_seconds
from cloud.minter.service import run_minter
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

    good = ""

    async def scenario() -> None:
        nonlocal good
        await migrate(database_url)
        fleet = await add_fleet(database_url, meters=3, readings_per_meter=2, seed=11)
        # Create the mint with the right authority, then swap in a funded stranger's keypair.
        backend = await open_backend(settings)
        good = (state / AUTHORITY_FILE).read_text()
        stranger = Keypair()
        await backend.airdrop(stranger.pubkey(), 10**9)
        await backend.close()
        (state / AUTHORITY_FILE).write_text(json.dumps(list(bytes(stranger))))
        dead_before = metrics.DEAD_LETTER._value.get()

        stop = asyncio.Event()
        task = asyncio.create_task(run_minter(settings, stop))
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
        finally:
            await conn.close()

    asyncio.run(scenario())
    runner = CliRunner()
    result = runner.invoke(status, ["--database-url", database_url, "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.output)["alerts"]["dead_letter"] is True
    first = asyncio.run(_first_id(database_url))
    result = runner.invoke(why, [str(first), "--database-url", database_url])
    assert "dead-lettered after 4 failed attempts" in result.output, result.output

    # Fix the configuration; a manual mint takes the dead-lettered reading.
    (state / AUTHORITY_FILE).write_text(good)
    outcome = asyncio.run(manual_mint(settings, reading_ids=[first], meter_id=None, wait_secs=20))
    assert outcome.complete, outcome.describe()
    result = runner.invoke(why, [str(first), "--database-url", database_url])
    assert "was minted in tx" in result.output, result.output


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

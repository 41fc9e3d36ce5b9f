"""The money test: the minter against localnet with 30 % of sends dropped, 10 % of sends answered with a
timeout although they landed, statuses delayed, blockhashes expiring in ~1 s, and the minter process
kill -9'd three times at random moments. Every reading ends minted, the supply equals the entitled
total (zero double mints), every wallet is exact and reconcile is clean."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from solders.pubkey import Pubkey

from cloud.chain.factory import open_backend
from cloud.chain.identity import MINT_FILE
from cloud.chain.tx import token_account
from cloud.db import migrate
from cloud.minter.reconcile import reconcile
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from tests.cloud.chain.conftest import LocalnetFactory
from tests.cloud.minter.conftest import add_fleet, entitled_by_wallet
from tests.helpers import wait_for

FAULTS = ("--drop-sends", "0.3", "--timeout-after-land", "0.1", "--status-delay", "0.3",
          "--blockhash-ttl", "5", "--slot-ms", "100", "--seed", os.environ.get("CHAOS_SEED", "42"))


def _env(database_url: str, rpc_url: str, state: Path) -> dict[str, str]:
    return os.environ | {
        "DATABASE_URL": database_url, "GRIDTOKENX_CHAIN_BACKEND": "rpc", "SOLANA_RPC_URL": rpc_url,
        # Confirmation by subscription (localnet serves the WebSocket on its port too), rebroadcast often.
        "SOLANA_WS_URL": rpc_url.replace("http://", "ws://"), "GRIDTOKENX_REBROADCAST_SECS": "0.25",
        "GRIDTOKENX_CHAIN_STATE_DIR": str(state), "TOKENIZATION_POLLING_INTERVAL_SECS": "0.2",
        "TOKENIZATION_BATCH_SIZE": "40", "TOKENIZATION_MAX_BATCHES_PER_POLL": "3",
        "TOKENIZATION_INITIAL_RETRY_DELAY_MINUTES": "0.005", "TOKENIZATION_MAX_RETRY_DELAY_MINUTES": "0.02",
        "TOKENIZATION_MAX_RETRY_ATTEMPTS": "1000", "GRIDTOKENX_CONFIRM_POLL_SECS": "0.25",
        "SOLANA_RPC_TIMEOUT_SECS": "3", "LOG_LEVEL": "INFO"}


@pytest.mark.chaos
def test_kill9_and_rpc_faults_never_double_mint(database_url: str, tmp_path: Path,
                                                localnet_factory: LocalnetFactory) -> None:
    url = localnet_factory(*FAULTS)
    state = tmp_path / "chain"
    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=36, readings_per_meter=8, wallets=24, seed=3))
    env = _env(database_url, url, state)
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "42")))
    log = (tmp_path / "minter.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "cloud.minter"], env=env, stdout=log, stderr=subprocess.STDOUT)

    proc = start()
    try:
        wait_for((state / MINT_FILE).exists, timeout=30, message="mint created")
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 2.5))  # a random point in the minter's life, on purpose
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start()
        wait_for(lambda: asyncio.run(_unminted(database_url)) == 0, timeout=150, interval=0.5,
                 message="every reading minted")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    settings = CloudSettings(database_url=database_url, tokenization=TokenizationSettings(),
                             chain=ChainSettings(backend="rpc", rpc_url=url, state_dir=state))

    async def verify() -> None:
        backend = await open_backend(settings)
        try:
            expected = entitled_by_wallet(fleet)
            assert await backend.token_supply() == sum(expected.values()), "supply != entitled: double/lost mint"
            for wallet, amount in expected.items():
                assert await backend.token_balance(token_account(backend.identity, Pubkey.from_string(wallet))) \
                    == amount, wallet
            report = await reconcile(database_url, backend)
            assert report.clean, report
            assert report.unminted_readings == 0 and report.entitlement_drift == 0
            assert report.entitled_by_wallet == expected
            conn = await asyncpg.connect(database_url)
            try:
                stats = await conn.fetchrow(
                    "SELECT count(*) AS batches, sum(sign_attempts) AS signatures, sum(send_count) AS sends,"
                    " count(*) FILTER (WHERE status = 'expired') AS expired FROM mint_batches")
                print(f"chaos stats: {dict(stats)}")
                # The faults really happened: some batches needed a new signature or were retried.
                assert stats["signatures"] > stats["batches"] or stats["expired"] > 0
            finally:
                await conn.close()
        finally:
            await backend.close()

    asyncio.run(verify())


async def _unminted(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted"))
    finally:
        await conn.close()

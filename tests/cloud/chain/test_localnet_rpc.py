"""The rpc backend against `gridtokenx localnet` and each of its faults."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from solders.keypair import Keypair

from cloud.chain.base import ChainBackend, ChainUnavailable
from cloud.chain.factory import open_backend
from cloud.chain.tx import build_mint_tx, token_account
from cloud.db import migrate
from cloud.minter.service import run_minter
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from tests.cloud.chain.conftest import LocalnetFactory
from tests.cloud.minter.conftest import add_fleet
from tests.helpers import async_wait_for


def _settings(url: str, state: Path, database_url: str = "", **tok: object) -> CloudSettings:
    return CloudSettings(
        database_url=database_url or CloudSettings().database_url,
        tokenization=TokenizationSettings(polling_interval_secs=0.1, **tok),  # type: ignore[arg-type]
        chain=ChainSettings(backend="rpc", rpc_url=url, state_dir=state, confirm_poll_secs=0.05,
                            rpc_timeout_secs=3))


def _rpc(url: str, method: str, params: list[object]) -> dict[str, object]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # a plain JSON-RPC client, as a wallet tool would be
        doc: dict[str, object] = json.loads(resp.read())
        return doc


async def test_timeout_after_land_is_unknown_to_the_client_but_landed(localnet_factory: LocalnetFactory,
                                                                 tmp_path: Path) -> None:
    url = localnet_factory("--timeout-after-land", "1.0")

    # Mint creation itself survives the fault: it rebroadcasts until the status shows up.
    backend = await open_backend(_settings(url, tmp_path / "s"))
    try:
        wallet = Keypair().pubkey()
        recent = await backend.latest_blockhash()
        tx = build_mint_tx(backend.identity, [(wallet, 42)], "gridtokenx:mint-batch:1", recent.blockhash)
        with pytest.raises(ChainUnavailable):
            await backend.send(bytes(tx))
        (status,) = await backend.signature_statuses([str(tx.signatures[0])])
        assert status is not None and status.err is None
        assert await backend.token_balance(token_account(backend.identity, wallet)) == 42
        # What a wallet tool sees over plain JSON-RPC.
        ata = str(token_account(backend.identity, wallet))
        balance = _rpc(url, "getTokenAccountBalance", [ata])["result"]
        assert balance["value"]["amount"] == "42"  # type: ignore[index]
        supply = _rpc(url, "getTokenSupply", [str(backend.identity.mint)])["result"]
        assert supply["value"]["amount"] == "42"  # type: ignore[index]
    finally:
        await backend.close()



@pytest.mark.parametrize("code", ["429", "-32005"])
async def test_rate_limit_is_answered_with_backoff_honouring_retry_after(localnet_factory: LocalnetFactory,
                                                                   code: str) -> None:
    """Before: the first 429 surfaced as ChainUnavailable (the minter's whole pass failed). Now the call
    is retried after Retry-After (1 s from localnet) or our own backoff (-32005 carries none)."""
    url = localnet_factory("--rate-limit", "3", "--rate-limit-code", code)

    from cloud.chain.rpc import RpcBackend

    backend = RpcBackend(url, timeout=3)
    try:
        start = time.monotonic()
        for _ in range(8):
            assert await backend.block_height() >= 0
        assert backend.rate_limited >= 1
        if code == "429":
            assert time.monotonic() - start >= 0.9  # waited as told
        assert backend.calls["getBlockHeight"] == 8 + backend.rate_limited  # every request counted
        # With no retries left the caller is told: outcome unknown, try later.
        impatient = RpcBackend(url, timeout=3, rate_limit_retries=0)
        try:
            with pytest.raises(ChainUnavailable):
                for _ in range(20):
                    await impatient.block_height()
        finally:
            await impatient.close()
    finally:
        await backend.close()



async def test_every_send_dropped_expires_resigns_then_retries(localnet_factory: LocalnetFactory, tmp_path: Path,
                                                          database_url: str) -> None:
    """A chain that never takes a transaction: each batch is re-signed after expiry (never before), then
    its readings go to the retry queue with backoff; nothing is ever minted."""
    # The mint is created while the node is healthy; the node restarts from its ledger with the fault.
    ledger = str(tmp_path / "ledger")
    healthy = localnet_factory("--state-dir", ledger)
    await _create_mint(_settings(healthy, tmp_path / "s"))
    url = localnet_factory("--state-dir", ledger, "--drop-sends", "1.0", "--blockhash-ttl", "3", "--slot-ms", "50",
                           stop_previous=True)
    settings = _settings(url, tmp_path / "s", database_url, resign_attempts=2, max_retry_attempts=2,
                         initial_retry_delay_minutes=0.002, max_retry_delay_minutes=0.01)

    await migrate(database_url)
    fleet = await add_fleet(database_url, meters=2, readings_per_meter=2, seed=9)
    stop = asyncio.Event()
    task = asyncio.create_task(run_minter(settings, stop))
    conn = await asyncpg.connect(database_url)
    try:
        async def dead() -> bool:
            if task.done():
                task.result()
            n = await conn.fetchval("SELECT count(*) FROM minting_retry_queue WHERE dead_lettered")
            return bool(n == len(fleet.reading_ids))
        await async_wait_for(dead, timeout=40, message="dead-lettered after expiries")
        stop.set()
        await task
        batches = await conn.fetch("SELECT status, sign_attempts FROM mint_batches ORDER BY id")
        assert [b["status"] for b in batches] == ["expired", "expired"]
        assert [b["sign_attempts"] for b in batches] == [3, 3]  # first signature + 2 re-signs
        sigs = await conn.fetchval("SELECT count(*) FROM mint_batch_signatures")
        assert sigs == 6
        assert await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted") == 0
    finally:
        await conn.close()



async def _create_mint(settings: CloudSettings) -> None:
    backend: ChainBackend = await open_backend(settings)
    await backend.close()

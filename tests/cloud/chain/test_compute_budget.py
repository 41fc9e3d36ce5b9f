"""Each mint transaction's compute-unit limit comes from the measured cost of its shape plus what its own
wallets add: deriving a token account costs 1,500 units per bump tried beyond 255, so a limit measured
on random wallets with a flat margin fails for wallets that derive at a low bump (found by
`gridtokenx bench confirm`: batches landed with an instruction error)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.base import MintIdentity
from cloud.chain.embedded import EmbeddedBackend
from cloud.chain.factory import open_backend
from cloud.chain.tx import (
    UNITS_PER_BUMP_ITERATION,
    ComputeBudget,
    ata_bump_iterations,
    budget_of,
    build_mint_tx,
    token_account,
)
from cloud.db import create_pool, migrate
from cloud.minter import store
from cloud.minter.service import Minter
from tests.cloud.minter.conftest import minter_settings


def _wallets(identity: MintIdentity, iterations: int, n: int, *, exact: bool = False) -> list[Pubkey]:
    out: list[Pubkey] = []
    while len(out) < n:
        w = Keypair().pubkey()
        extra = ata_bump_iterations(identity, w)
        if extra == iterations or (not exact and extra >= iterations):
            out.append(w)
    return out


async def test_limit_covers_wallets_that_derive_at_low_bumps_and_is_tight(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url)
    settings = minter_settings(database_url, tmp_path / "chain")
    backend = await open_backend(settings)
    assert isinstance(backend, EmbeddedBackend)
    pool = await create_pool(database_url)
    try:
        minter = Minter(pool, backend, settings)
        await minter.budget.measure_units()
        assert sorted(minter.budget.unit_base) == list(range(1, minter.max_wallets + 1))
        identity = backend.identity
        # Dear wallets (>= 5 extra bumps each, ~3 % of all wallets) in every shape: each lands.
        for n in (1, 4, minter.max_wallets):
            entries = [(w, 10**9) for w in _wallets(identity, 5, n)]
            limit = minter.budget.unit_limit(entries)
            recent = await backend.latest_blockhash()
            tx = build_mint_tx(identity, entries, store.memo_for(10**15), recent.blockhash,
                               ComputeBudget(limit, 1))
            used = await backend.simulate_units(bytes(tx))
            assert used <= limit <= used * 1.3, (n, used, limit)  # enough, and not wasteful
            record = backend.ledger.process(VersionedTransaction.from_bytes(bytes(tx)))
            assert record.err is None, record.err
            for w, _ in entries:
                assert await backend.token_balance(token_account(identity, w)) == 10**9
        # The same shape with cheap wallets gets a lower limit: the fee follows the real cost.
        cheap = [(w, 1) for w in _wallets(identity, 0, 4, exact=True)]
        dear = [(w, 1) for w in _wallets(identity, 5, 4, exact=True)]
        assert minter.budget.unit_limit(dear) - minter.budget.unit_limit(cheap) >= 4 * 5 * UNITS_PER_BUMP_ITERATION
    finally:
        await pool.close()
        await backend.close()



async def test_fee_recorded_with_the_batch_is_what_its_bytes_pay(database_url: str, tmp_path: Path) -> None:
    from tests.cloud.minter.conftest import add_fleet

    await migrate(database_url)
    await add_fleet(database_url, meters=20, readings_per_meter=1, wallets=20, seed=47)
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=100)
    backend = await open_backend(settings)
    pool = await create_pool(database_url)
    try:
        minter = Minter(pool, backend, settings)
        ids = await minter.plan()
        await minter.drive()
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT status, tx_bytes, compute_unit_limit, compute_unit_price, fee_lamports,"
                                    " cardinality(wallets) AS n FROM mint_batches WHERE id = ANY($1) ORDER BY id", ids)
        finally:
            await conn.close()
        assert [r["n"] for r in rows] == [9, 9, 2]  # packing stays maximal: 9 wallets per transaction
        for r in rows:
            assert r["status"] == "confirmed"
            budget = budget_of(VersionedTransaction.from_bytes(r["tx_bytes"]))
            assert budget == ComputeBudget(r["compute_unit_limit"], r["compute_unit_price"])
            assert r["fee_lamports"] == budget.fee() == 5000 + budget.priority_fee()
    finally:
        await pool.close()
        await backend.close()


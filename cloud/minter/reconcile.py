"""Reconciliation: the chain is the truth for balances, the database for intent. Compare them.

1. Per wallet: on-chain ATA balance vs the sum of confirmed batch amounts for that wallet.
2. The mint's supply vs the sum of all confirmed batches.
3. The mint authority's signature history: every landed transaction whose memo names a batch must be
   that batch's recorded signature. A landed batch still open in the WAL (the minter died between the
   chain and the database) is "unrecorded" and `--fix` confirms it exactly as the minter would. A
   landed batch that was released (expired/failed) is a potential double mint and is only reported.
4. Every confirmed batch's signature must have landed without error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
from solders.pubkey import Pubkey

from cloud.chain.base import ChainBackend
from cloud.chain.tx import token_account
from cloud.minter import store


@dataclass(frozen=True, slots=True)
class WalletDrift:
    wallet: str
    database: int
    chain: int


@dataclass(frozen=True, slots=True)
class LandedUnrecorded:
    batch_id: int
    signature: str
    slot: int
    batch_status: str
    fixed: bool


@dataclass(slots=True)
class ReconcileReport:
    mint: str
    wallets_checked: int = 0
    supply_database: int = 0
    supply_chain: int = 0
    wallet_drift: list[WalletDrift] = field(default_factory=list)
    unrecorded: list[LandedUnrecorded] = field(default_factory=list)
    confirmed_not_on_chain: list[tuple[int, str]] = field(default_factory=list)
    foreign_transactions: int = 0  # authority transactions without one of our memos (mint creation, ...)

    @property
    def clean(self) -> bool:
        return (not self.wallet_drift and not self.unrecorded and not self.confirmed_not_on_chain
                and self.supply_database == self.supply_chain)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"clean": self.clean}


async def reconcile(dsn: str, backend: ChainBackend, *, fix: bool = False) -> ReconcileReport:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        report = ReconcileReport(mint=str(backend.identity.mint))
        await _scan_history(pool, backend, report, fix=fix)
        await _compare_balances(pool, backend, report)
        await _check_confirmed(pool, backend, report)
        return report
    finally:
        await pool.close()


async def _scan_history(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport, *,
                        fix: bool) -> None:
    authority = backend.identity.authority.pubkey()
    before: str | None = None
    while True:
        page = await backend.signatures_for_address(authority, before=before, limit=1000)
        if not page:
            return
        for info in page:
            batch_id = store.batch_id_from_memo(info.memo)
            if batch_id is None:
                report.foreign_transactions += 1
                continue
            if info.err is not None:
                continue  # landed with an error: nothing was minted
            row = await pool.fetchrow("SELECT status, signature FROM mint_batches WHERE id = $1", batch_id)
            if row is not None and row["status"] == "confirmed" and row["signature"] == info.signature:
                continue
            status = "unknown" if row is None else str(row["status"])
            fixed = False
            if fix and row is not None and status in ("planned", "sent") and row["signature"] == info.signature:
                fixed = await store.confirm(pool, batch_id, info.signature, info.slot, info.block_time) is not None
            report.unrecorded.append(LandedUnrecorded(batch_id, info.signature, info.slot, status, fixed))
        before = page[-1].signature


async def _compare_balances(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport) -> None:
    rows = await pool.fetch(
        "SELECT w.wallet, sum(w.amount)::numeric AS amount FROM mint_batches b,"
        " unnest(b.wallets, b.amounts) AS w(wallet, amount)"
        " WHERE b.status = 'confirmed' AND b.mint_address = $1 GROUP BY w.wallet", report.mint)
    total = 0
    for r in rows:
        expected = int(r["amount"])
        total += expected
        on_chain = await backend.token_balance(token_account(backend.identity, Pubkey.from_string(r["wallet"])))
        report.wallets_checked += 1
        if on_chain != expected:
            report.wallet_drift.append(WalletDrift(r["wallet"], expected, on_chain))
    report.supply_database = total
    report.supply_chain = await backend.token_supply()


async def _check_confirmed(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport) -> None:
    rows = await pool.fetch("SELECT id, signature FROM mint_batches WHERE status = 'confirmed'"
                            " AND signature IS NOT NULL AND mint_address = $1 ORDER BY id", report.mint)
    for i in range(0, len(rows), 256):
        chunk = rows[i:i + 256]
        statuses = await backend.signature_statuses([r["signature"] for r in chunk])
        for r, st in zip(chunk, statuses, strict=True):
            if st is None or st.err is not None:
                report.confirmed_not_on_chain.append((r["id"], r["signature"]))

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
from fractions import Fraction
from typing import Any

import asyncpg
from solders.pubkey import Pubkey

from cloud.chain.base import ChainBackend
from cloud.chain.tx import token_account
from cloud.minter import store
from protocol.units import entitled_base_units


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


#: What `foreign_transactions` counts, for the JSON and text reports.
FOREIGN_NOTE = ("transactions signed by the mint authority without a mint-batch memo: creating the mint "
                "(1 on a fresh chain) and anything else done with the authority key; they mint nothing by "
                "this service and are not drift")


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
    # Entitlement check: on-chain balance of every registered wallet against what its meters' accepted
    # readings entitle it to (protocol.units.entitled_base_units per meter, summed per wallet).
    chain_by_wallet: dict[str, int] = field(default_factory=dict)
    entitled_by_wallet: dict[str, int] = field(default_factory=dict)
    unminted_readings: int = 0
    overminted_wallets: list[str] = field(default_factory=list)

    @property
    def entitlement_drift(self) -> int:
        """Σ |chain − entitled| over wallets. Only meaningful as 'drift' once nothing is left unminted."""
        wallets = self.chain_by_wallet.keys() | self.entitled_by_wallet.keys()
        return sum(abs(self.chain_by_wallet.get(w, 0) - self.entitled_by_wallet.get(w, 0)) for w in wallets)

    @property
    def clean(self) -> bool:
        return (not self.wallet_drift and not self.unrecorded and not self.confirmed_not_on_chain
                and self.supply_database == self.supply_chain and not self.overminted_wallets
                and (self.unminted_readings > 0 or self.entitlement_drift == 0))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"clean": self.clean, "entitlement_drift": self.entitlement_drift,
                               "foreign_transactions_note": FOREIGN_NOTE}


async def reconcile(dsn: str, backend: ChainBackend, *, fix: bool = False, ratio: Fraction = Fraction(1),
                    decimals: int = 9) -> ReconcileReport:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        report = ReconcileReport(mint=str(backend.identity.mint))
        await _scan_history(pool, backend, report, fix=fix)
        await _compare_balances(pool, backend, report)
        await _check_confirmed(pool, backend, report)
        await _check_entitlement(pool, backend, report, ratio=ratio, decimals=decimals)
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


async def _check_entitlement(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport, *,
                             ratio: Fraction, decimals: int) -> None:
    rows = await pool.fetch(
        "SELECT m.wallet_address AS wallet, sum(r.export_wh)::bigint AS wh FROM meters m"
        " LEFT JOIN meter_readings r ON r.meter_id = m.meter_id AND r.wallet_address = m.wallet_address"
        " GROUP BY m.meter_id, m.wallet_address")
    for r in rows:
        entitled = entitled_base_units(int(r["wh"] or 0), ratio=ratio, decimals=decimals)
        report.entitled_by_wallet[r["wallet"]] = report.entitled_by_wallet.get(r["wallet"], 0) + entitled
    for wallet in report.entitled_by_wallet:
        report.chain_by_wallet[wallet] = await backend.token_balance(
            token_account(backend.identity, Pubkey.from_string(wallet)))
    report.overminted_wallets = sorted(w for w, b in report.chain_by_wallet.items()
                                       if b > report.entitled_by_wallet.get(w, 0))
    report.unminted_readings = int(await pool.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted"))

"""What the minter pays and asks for: compute-unit limits, the priority fee, and whether the fee payer can pay.

- Unit limit: each transaction shape (1..max_wallets wallets) is simulated once with wallets whose
  token account is new and derives at bump 255; a real transaction's limit adds 1,500 units per extra
  bump its own wallets need (measured), times GRIDTOKENX_COMPUTE_UNIT_MARGIN.
- Price: cloud.chain.fees (none / fixed / dynamic), capped; refreshed once per poll and before a re-sign.
- Fee payer: the authority's SOL against a worst-case batch (every token account new), at most once
  per poll; the minter sends nothing while it cannot pay one, and says so once.
- Recording: each batch's limit, price and fee are read back from its signed bytes into mint_batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import asyncpg
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.base import ChainBackend, SendRefused
from cloud.chain.fees import wanted_price
from cloud.chain.tx import (
    MAX_COMPUTE_UNITS,
    UNITS_PER_BUMP_ITERATION,
    ComputeBudget,
    ata_bump_iterations,
    budget_of,
    build_mint_tx,
)
from cloud.minter import metrics, store
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)

TOKEN_ACCOUNT_SIZE = 170  # a Token-2022 ATA (165 bytes + ImmutableOwner); SPL Token's is 165


def rent_exempt_lamports(size: int) -> int:
    """Rent-exempt minimum for an account of `size` bytes at the default rent (3,480 lamports/byte-year x 2)."""
    return (128 + size) * 3480 * 2


class Budget:
    def __init__(self, backend: ChainBackend, settings: CloudSettings, max_wallets: int) -> None:
        self.backend = backend
        self.settings = settings
        self.identity = backend.identity
        self.max_wallets = max_wallets
        # Wallets in a transaction -> compute units it consumed when measured (every token account created,
        # every derivation at bump 255); the limit adds each real wallet's extra bump iterations and the margin.
        self.unit_base: dict[int, int] = {}
        self.unit_price = 0  # micro-lamports per unit for the next signature
        self.fee_payer_ok = True
        self.fee_payer_checks = 0
        self._fee_payer_checked = -math.inf
        self._capped_warned = False

    async def prepare(self) -> None:
        """Before a round of signatures: shapes measured (once), price read."""
        await self.measure_units()
        await self.refresh_price()

    async def refresh_price(self) -> None:
        self.unit_price = await self.priority_price()
        metrics.PRIORITY_PRICE.set(self.unit_price)

    def for_entries(self, entries: Sequence[tuple[Pubkey, int]]) -> ComputeBudget:
        return ComputeBudget(self.unit_limit(entries), self.unit_price)

    def unit_limit(self, entries: Sequence[tuple[Pubkey, int]]) -> int:
        """Measured units of this shape + UNITS_PER_BUMP_ITERATION per extra bump of its wallets, x margin."""
        base = self.unit_base.get(len(entries))
        if base is None:
            return MAX_COMPUTE_UNITS
        extra = sum(ata_bump_iterations(self.identity, w) for w, _ in entries) * UNITS_PER_BUMP_ITERATION
        return min(MAX_COMPUTE_UNITS, math.ceil((base + extra) * self.settings.chain.compute_unit_margin))

    def _probe_wallet(self) -> Pubkey:
        """A fresh wallet whose token account derives at bump 255 (the cheapest case; others cost more)."""
        while True:
            wallet = Keypair().pubkey()
            if ata_bump_iterations(self.identity, wallet) == 0:
                return wallet

    async def measure_units(self) -> None:
        """Simulate each transaction shape once (1..max_wallets new wallets, so each token account is
        created: the dearest case) and keep the units it consumed."""
        if len(self.unit_base) < self.max_wallets:
            recent = await self.backend.latest_blockhash()
            memo = store.memo_for(10**15)
            for n in range(1, self.max_wallets + 1):
                if n in self.unit_base:
                    continue
                probe = build_mint_tx(self.identity, [(self._probe_wallet(), 1) for _ in range(n)], memo,
                                      recent.blockhash, ComputeBudget(MAX_COMPUTE_UNITS, 0))
                try:
                    units = await self.backend.simulate_units(bytes(probe))
                except SendRefused as exc:
                    # The mint itself refuses (wrong authority, ...): batches will land with that error and
                    # go to the retry queue; they carry the runtime's ceiling until a measurement succeeds.
                    log.warning("cannot measure compute units (%s); using %d until it can be", exc,
                                MAX_COMPUTE_UNITS)
                    return
                self.unit_base[n] = units
            log.info("compute units measured per wallets in a transaction (limit: + %d per extra bump, x %.2f): %s",
                     UNITS_PER_BUMP_ITERATION, self.settings.chain.compute_unit_margin, self.unit_base)

    async def priority_price(self) -> int:
        cap = self.settings.chain.priority_fee_max_micro_lamports
        wanted = await wanted_price(self.backend, self.settings.chain, [self.identity.mint])
        if wanted > cap:
            if not self._capped_warned:
                log.warning("priority fee %d µlamports/unit wanted, capped at %d "
                            "(GRIDTOKENX_PRIORITY_FEE_MAX_MICROLAMPORTS); batches may not land", wanted, cap)
                self._capped_warned = True
            return cap
        self._capped_warned = False
        return wanted

    def worst_batch_lamports(self) -> int:
        """A full batch whose every wallet needs its token account created: fee + priority fee + rent."""
        base = self.unit_base.get(self.max_wallets)
        # A typical full batch: each wallet's derivation a few bumps past 255 (half need none, a quarter one, ...).
        limit = (MAX_COMPUTE_UNITS if base is None else math.ceil(
            (base + 2 * self.max_wallets * UNITS_PER_BUMP_ITERATION) * self.settings.chain.compute_unit_margin))
        return (ComputeBudget(limit, self.unit_price).fee()
                + self.max_wallets * rent_exempt_lamports(TOKEN_ACCOUNT_SIZE))

    async def check_fee_payer(self, *, force: bool = False) -> bool:
        """Read the authority's SOL (at most once per polling interval); False when it cannot pay one
        worst-case batch. The refusal is logged once, and once more when it is funded again."""
        now = time.monotonic()
        every = min(self.settings.tokenization.polling_interval_secs, 30.0)
        if not force and now - self._fee_payer_checked < every:
            return self.fee_payer_ok
        self._fee_payer_checked = now
        self.fee_payer_checks += 1
        lamports = await self.backend.lamports(self.identity.authority.pubkey())
        per_batch = self.worst_batch_lamports()
        left = lamports // per_batch
        metrics.FEE_PAYER_LAMPORTS.set(lamports)
        metrics.FEE_PAYER_BATCHES_LEFT.set(left)
        metrics.ALERT.labels(name="fee_payer_low").set(
            1 if left < self.settings.chain.fee_payer_min_batches else 0)
        ok = left >= 1
        if ok != self.fee_payer_ok:
            if ok:
                log.warning("fee payer %s funded again (%d lamports, %d batches); minting resumes",
                            self.identity.authority.pubkey(), lamports, left)
            else:
                log.error("fee payer %s has %d lamports, a batch may need %d: the minter will not send until "
                          "it is funded (transfer SOL to it)", self.identity.authority.pubkey(), lamports, per_batch)
        self.fee_payer_ok = ok
        return ok

    async def record_fees(self, pool: asyncpg.Pool, batch_ids: Sequence[int]) -> None:
        """Write each batch's compute budget and fee, read back from the signed bytes it will send."""
        if not batch_ids:
            return
        rows = await pool.fetch("SELECT id, tx_bytes FROM mint_batches WHERE id = ANY($1) "
                                     "AND tx_bytes IS NOT NULL", list(batch_ids))
        updates = []
        for r in rows:
            budget = budget_of(VersionedTransaction.from_bytes(r["tx_bytes"]))
            if budget is not None:
                updates.append((r["id"], budget.unit_limit, budget.unit_price, budget.fee()))
        if updates:
            await pool.executemany("UPDATE mint_batches SET compute_unit_limit = $2, compute_unit_price = $3,"
                                        " fee_lamports = $4 WHERE id = $1", updates)

"""The minting loop: plan batches from unminted readings, send them, confirm or release them.

    poll (every TOKENIZATION_POLLING_INTERVAL_SECS, when auto-mint is on)
      claim readings → plan (pure) → sign → WRITE batch + signature + bytes to Postgres
    drive (every GRIDTOKENX_CONFIRM_POLL_SECS while batches are open; with a healthy WebSocket, on each
           signatureNotification and every GRIDTOKENX_REBROADCAST_SECS)
      subscribe → (re)broadcast the stored bytes → block height → signature statuses (only those the
      subscription cannot vouch for: socket down, subscribed after a broadcast, or blockhash expired)
      landed ok     → readings minted, ledger advanced, one transaction
      landed w/ err → nothing was minted (transactions are atomic): release to the retry queue
      no status and the blockhash expired (height read BEFORE the status) → re-sign, or release

A crash anywhere leaves the batch in the WAL; the next start drives it on with the same bytes.
Several batches may be in flight for one authority because each meter has at most one open batch
and each batch's amounts are computed from its meters' confirmed ledger (docs/minter.md, "Safety").
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.base import ChainBackend, ChainError, ChainUnavailable, MintIdentity, RecentBlockhash, SignatureStatus
from cloud.chain.tx import budget_of, build_mint_tx, max_wallets_per_tx
from cloud.chain.ws import SignatureWatcher
from cloud.minter import MinterRefused, economics, metrics, planner, store
from cloud.minter.budget import Budget
from cloud.minter.health import MinterHealth
from cloud.minter.status import export, prune, read_status
from cloud.settings import CloudSettings, websocket_url
from runtime.backoff import Backoff, pause

log = logging.getLogger(__name__)

DRAIN_SECS = 10.0
MANUAL_LIMIT = 100_000

class Minter:
    def __init__(self, pool: asyncpg.Pool, backend: ChainBackend, settings: CloudSettings,
                 watcher: SignatureWatcher | None = None) -> None:
        self.pool = pool
        self.backend = backend
        self.settings = settings
        self.identity: MintIdentity = backend.identity
        self.authority = str(self.identity.authority.pubkey())
        # Measured once: the most wallets whose ATA-create + mint_to fit one transaction with our memo
        # and both compute-budget instructions.
        self.max_wallets = max_wallets_per_tx(self.identity, store.memo_for(10**15))
        self._last_refusal: dict[int, str] = {}  # batch id -> why the node last refused it (for the error)
        self.watcher = watcher
        self.budget = Budget(backend, settings, self.max_wallets)  # compute budget, priority fee, fee payer
        self._sent_at: dict[str, float] = {}  # signature -> when this process last broadcast it
        self._signed_here: set[str] = set()  # signatures this process signed and has not broadcast yet
        self._clean: dict[str, int] = {}  # signature -> watcher generation in which nothing can be missed
        self.confirmed_batches = 0
        self._settings_checked = False
        self.health = MinterHealth()

    # -- planning ---------------------------------------------------------------------------
    async def plan(self, *, reading_ids: Sequence[int] | None = None, meter_id: str | None = None,
                   manual: bool = False, limit: int | None = None) -> list[int]:
        """One planning transaction, owned here: claim → select and plan (pure) → for each batch: its id,
        its signature, its write-ahead row. Nothing is sent before the transaction commits."""
        if not await self.budget.check_fee_payer():
            return []
        await self.budget.prepare()
        tok = self.settings.tokenization
        if not self._settings_checked:  # records them on first use; SettingsError when they disagree
            await economics.ensure_recorded(self.pool, self.identity, tok)
            self._settings_checked = True
        recent = await self.backend.latest_blockhash()
        ids: list[int] = []
        completed: list[float] = []
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await store.claim(conn, limit=limit or tok.batch_size, reading_ids=reading_ids,
                                        meter_id=meter_id, manual=manual)
            if claimed is None:
                return []
            records = claimed.records
            groups, dead = planner.select(claimed.rows, claimed.free_meters, records,
                                          lambda reading_id: economics.in_force(records, reading_id))
            await store.dead_letter(conn, dead)
            for rec, group in groups:
                ledgers = await store.ledgers(conn, sorted({r.meter_id for r in group}), rec.id)
                plans = planner.plan(group, ledgers, ratio=rec.ratio, decimals=rec.decimals,
                                     fits=lambda transfers: len(transfers) <= self.max_wallets,
                                     max_batches=tok.max_batches_per_poll - len(ids))
                for p in plans:
                    batch_id = await store.next_batch_id(conn)
                    signed = self._sign(batch_id, p.transfers, recent) if p.transfers else None
                    completed += await store.write_batch(conn, batch_id, p, signed, mint=str(self.identity.mint),
                                                         authority=self.authority, manual=manual,
                                                         settings_id=rec.id)
                    ids.append(batch_id)
                if len(ids) >= tok.max_batches_per_poll:
                    break
        # Readings whose batch had nothing to send (0 Wh, dust) are minted now: count them too.
        metrics.MINTED_READINGS.inc(len(completed))
        for value in completed:
            metrics.LATENCY.observe(max(value, 0.0))
        await self.budget.record_fees(self.pool, ids)
        return ids

    def _sign(self, batch_id: int, transfers: list[tuple[str, int]], recent: RecentBlockhash) -> store.SignedTx:
        entries = [(Pubkey.from_string(w), a) for w, a in transfers]
        tx = build_mint_tx(self.identity, entries, store.memo_for(batch_id), recent.blockhash,
                           self.budget.for_entries(entries))
        signature = str(tx.signatures[0])
        self._signed_here.add(signature)
        return store.SignedTx(signature, bytes(tx), str(recent.blockhash), recent.last_valid_block_height)

    # -- compute budget and fees ------------------------------------------------------------
    # -- driving ----------------------------------------------------------------------------
    @property
    def subscribing(self) -> bool:
        return self.watcher is not None and self.watcher.healthy

    async def drive(self) -> int:
        """One pass over open batches; returns how many are still open."""
        batches = [b for b in await store.open_batches(self.pool, self.authority) if b.signature]
        if not batches:
            return 0
        watcher = self.watcher if self.subscribing else None
        if watcher is not None:
            # Subscribe before broadcasting, so a landing cannot slip between the two.
            await watcher.watch([b.signature for b in batches if b.signature])
        sent: list[tuple[int, str]] = []
        now = time.monotonic()
        for b in batches:
            assert b.tx_bytes is not None and b.signature is not None
            last = self._sent_at.get(b.signature)
            if not self.budget.fee_payer_ok or (last is not None and now - last < self.settings.chain.rebroadcast_secs):
                continue
            if b.signature in self._signed_here and watcher is not None and watcher.subscribed(b.signature):
                self._clean[b.signature] = watcher.generation  # subscribed before its first broadcast
            self._signed_here.discard(b.signature)
            self._sent_at[b.signature] = now
            sent.append((b.id, b.signature))
            try:
                await self.backend.send(b.tx_bytes)
            except ChainUnavailable as exc:
                log.debug("send of batch %d: %s", b.id, exc)
            except ChainError as exc:
                # Refused now (already processed, preflight); the status check below decides.
                log.debug("send of batch %d refused: %s", b.id, exc)
                self._last_refusal[b.id] = str(exc)[:300]
        await store.mark_sent(self.pool, sent)
        # Height first: a status read afterwards that is still empty proves it can never land.
        height = await self.backend.block_height()
        notified = self.watcher.landed if self.watcher is not None else {}
        poll = [b.signature for b in batches if b.signature is not None and b.signature not in notified
                and not self._vouched(b.signature, height, b.last_valid_block_height)]
        polled: dict[str, SignatureStatus | None] = {}
        if poll:
            polled = dict(zip(poll, await self.backend.signature_statuses(poll), strict=True))
            if watcher is not None:
                for sig in poll:
                    if watcher.subscribed(sig):
                        self._clean[sig] = watcher.generation  # polled after subscribing: nothing missed
        still_open = 0
        landed: list[tuple[store.OpenBatch, int]] = []
        for b in batches:
            assert b.signature is not None and b.last_valid_block_height is not None
            st = notified.get(b.signature) or polled.get(b.signature)
            if st is not None and not st.confirmed:
                still_open += 1  # processed only: wait, it is neither landed nor dead yet
            elif st is not None:
                self._forget(b.signature)
                if st.err is None:
                    landed.append((b, st.slot))
                else:
                    await self._release(b, "failed", f"landed with error {st.err}; nothing was minted")
            elif b.signature in polled and height > b.last_valid_block_height:
                if not self.budget.fee_payer_ok:
                    still_open += 1  # re-signed once it can be paid for
                elif b.sign_attempts <= self.settings.tokenization.resign_attempts:
                    await self._resign(b)
                    still_open += 1
                else:
                    self._forget(b.signature)
                    refusal = self._last_refusal.pop(b.id, None)
                    await self._release(b, "expired", f"blockhash expired unconfirmed {b.sign_attempts} times"
                                        + (f"; last refusal: {refusal}" if refusal else ""))
            else:
                still_open += 1
        await self._confirmed(landed)
        return still_open

    def _vouched(self, signature: str, height: int, last_valid: int | None) -> bool:
        """True when a live subscription would have told us if this signature landed, and its blockhash
        has not expired (expiry is only ever decided on a status read over HTTP after the height)."""
        w = self.watcher
        return (w is not None and w.subscribed(signature) and self._clean.get(signature) == w.generation
                and last_valid is not None and height <= last_valid)

    def _forget(self, signature: str) -> None:
        self._sent_at.pop(signature, None)
        self._clean.pop(signature, None)
        self._signed_here.discard(signature)
        if self.watcher is not None:
            self.watcher.forget(signature)

    async def _confirmed(self, landed: Sequence[tuple[store.OpenBatch, int]]) -> None:
        """Record this pass's landed batches in one PostgreSQL transaction (`store.confirm_many`)."""
        if not landed:
            return
        items = []
        for b, slot in landed:
            assert b.signature is not None
            self._last_refusal.pop(b.id, None)
            items.append((b.id, b.signature, slot, await self.backend.block_time(b.signature, slot)))
        results = await store.confirm_many(self.pool, items)
        done = [(b, slot, latencies) for (b, slot), latencies in zip(landed, results, strict=True)
                if latencies is not None]
        paid = []
        for b, slot, latencies in done:
            metrics.BATCHES.labels(outcome="confirmed").inc()
            self.confirmed_batches += 1
            if b.tx_bytes is not None:
                budget = budget_of(VersionedTransaction.from_bytes(b.tx_bytes))
                if budget is not None:
                    metrics.FEES_PAID.inc(budget.fee())
                    paid.append(b.id)
            metrics.MINTED_READINGS.inc(len(latencies))
            metrics.MINTED_UNITS.inc(sum(b.amounts))
            for value in latencies:
                metrics.LATENCY.observe(max(value, 0.0))
            log.info("batch %d confirmed: %d readings, %d wallets, tx %s slot %d", b.id, len(latencies),
                     len(b.transfers), b.signature, slot)
        if paid:
            await self.budget.record_fees(self.pool, paid)
        calls = getattr(self.backend, "total_calls", None)
        if isinstance(calls, int) and self.confirmed_batches:
            metrics.RPC_CALLS_PER_BATCH.set(calls / self.confirmed_batches)

    async def _release(self, b: store.OpenBatch, outcome: str, error: str) -> None:
        decisions = await store.release(self.pool, b.id, b.signature, status=outcome, error=error,
                                        settings=self.settings.tokenization)
        if decisions is None:
            return
        dead = sum(1 for d in decisions if d.dead_letter)
        metrics.BATCHES.labels(outcome=outcome).inc()
        if dead:
            metrics.DEAD_LETTER.inc(dead)
            metrics.ALERT.labels(name="dead_letter").set(1)
        log.warning("batch %d %s (%s): %d readings to retry, %d dead-lettered", b.id, outcome, error,
                    len(decisions) - dead, dead)

    async def _resign(self, b: store.OpenBatch) -> None:
        assert b.signature is not None
        self._forget(b.signature)
        await self.budget.refresh_price()
        recent = await self.backend.latest_blockhash()
        new = self._sign(b.id, b.transfers, recent)
        if await store.resign(self.pool, b.id, b.signature, new):
            await self.budget.record_fees(self.pool, [b.id])
            metrics.BATCHES.labels(outcome="resigned").inc()
            log.info("batch %d re-signed after blockhash expiry (attempt %d): %s", b.id, b.sign_attempts + 1,
                     new.signature)

    async def wait_for(self, batch_ids: Sequence[int], *, wait_secs: float) -> dict[int, str]:
        """Drive until these batches leave the open states (manual mint); returns id → status."""
        deadline = time.monotonic() + wait_secs
        while True:
            await self.drive()
            rows = await self.pool.fetch("SELECT id, status FROM mint_batches WHERE id = ANY($1)", list(batch_ids))
            result = {r["id"]: r["status"] for r in rows}
            if all(s not in ("planned", "sent") for s in result.values()) or time.monotonic() > deadline:
                return result
            await asyncio.sleep(self.settings.chain.confirm_poll_secs)

    async def serve_requests(self) -> None:
        """Manual `cloud mint` requests, served whether or not auto-mint is on."""
        for req in await store.pending_requests(self.pool):
            batch_ids = await self.plan(reading_ids=req.reading_ids, meter_id=req.meter_id, manual=True,
                                        limit=MANUAL_LIMIT)
            await store.mark_request_served(self.pool, req.id, batch_ids)
            log.info("manual mint request %d: batches %s", req.id, batch_ids)

    async def refresh_metrics(self) -> None:
        await prune(self.pool)
        export(await read_status(self.pool))

    # -- loop -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        tok = self.settings.tokenization
        next_poll = 0.0
        failures = Backoff(1.0, 30.0)
        open_count = 0
        while not stop.is_set():
            try:
                if tok.auto_mint_enabled and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + tok.polling_interval_secs
                    planned = await self.plan()
                    if planned:
                        log.debug("planned batches %s", planned)
                    await self.refresh_metrics()
                elif not tok.auto_mint_enabled and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + tok.polling_interval_secs
                    await self.refresh_metrics()
                await self.serve_requests()
                if self.watcher is not None:
                    self.watcher.wake.clear()  # what arrives from here on wakes the next pass at once
                open_count = await self.drive()
                failures.reset()
                self.health.ok()
                if open_count:
                    # Subscribed: a notification wakes us; otherwise look again when a rebroadcast is due.
                    delay = (self.settings.chain.rebroadcast_secs if self.subscribing
                             else self.settings.chain.confirm_poll_secs)
                else:
                    # Manual requests are looked for at least every second.
                    delay = min(max(0.0, next_poll - time.monotonic()), 1.0)
            except (TimeoutError, ChainError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                level = logging.WARNING if failures.attempt == 0 else logging.DEBUG
                log.log(level, "minter pass failed (%s: %s); retrying", type(exc).__name__, exc)
                self.health.failed(f"minter pass failed: {type(exc).__name__}: {exc}"[:300])
                delay = failures.next()
            await self._sleep(stop, max(delay, 0.01))
        await self._drain()

    async def _sleep(self, stop: asyncio.Event, delay: float) -> None:
        """Until `stop`, a WebSocket event (notification, socket lost or back) or `delay` seconds."""
        waits = [asyncio.ensure_future(stop.wait())]
        if self.watcher is not None:
            waits.append(asyncio.ensure_future(self.watcher.wake.wait()))
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _drain(self) -> None:
        """On shutdown give in-flight batches a moment to confirm; whatever is left resumes next start."""
        deadline = time.monotonic() + DRAIN_SECS
        while time.monotonic() < deadline:
            try:
                if await self.drive() == 0:
                    return
            except (ChainError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("drain stopped: %s", exc)
                return
            await asyncio.sleep(self.settings.chain.confirm_poll_secs)


def refuse(sentence: str) -> MinterRefused:
    log.error("minter refuses to start: %s", sentence)
    sys.stderr.write(f"minter refuses to start: {sentence}\n")
    sys.stderr.flush()
    return MinterRefused(sentence)


async def run_minter(settings: CloudSettings, stop: asyncio.Event, health: MinterHealth | None = None) -> None:
    """Entry point for `gridtokenx cloud run --role mint|all`: runs until `stop` is set.

    Refuses to start (exit status 2, one sentence on stderr) when the economic settings are unsafe or
    disagree with the recorded ones or with the mint on chain (cloud.minter.economics)."""
    from cloud.chain.factory import open_backend
    from cloud.chain.identity import IdentityError
    from cloud.db import create_pool

    try:
        economics.check_config(settings.tokenization)
        backend = await _open_when_reachable(settings, stop, open_backend)
    except (economics.SettingsError, IdentityError) as exc:
        raise refuse(str(exc)) from None
    if backend is None:
        return
    try:
        pool = await create_pool(settings.database_url)
        watcher = None
        if settings.chain.backend == "rpc" and settings.chain.confirm_mode == "subscribe":
            watcher = SignatureWatcher(websocket_url(settings.chain))
            watcher.start()
        try:
            try:
                await economics.ensure_recorded(pool, backend.identity, settings.tokenization)
            except economics.SettingsError as exc:
                raise refuse(str(exc)) from None
            minter = Minter(pool, backend, settings, watcher)
            if health is not None:
                minter.health = health
            await economics.record_runtime(pool, minter.authority, settings.tokenization)
            log.info("minter started: mint %s, authority %s, backend %s, %d wallets per transaction, "
                     "confirmation by %s", minter.identity.mint, minter.authority, settings.chain.backend,
                     minter.max_wallets, "subscription" if watcher else "polling")
            await minter.run(stop)
        finally:
            if watcher is not None:
                await watcher.close()
            await pool.close()
    finally:
        await backend.close()




async def _open_when_reachable(settings: CloudSettings, stop: asyncio.Event,
                               opener: Callable[[CloudSettings], Awaitable[ChainBackend]]) -> ChainBackend | None:
    """An unreachable chain at start is waited for (with backoff); a misconfiguration raises at once."""
    backoff = Backoff(1.0, 30.0)
    while not stop.is_set():
        try:
            return await opener(settings)
        except ChainUnavailable as exc:
            log.log(logging.WARNING if backoff.attempt == 0 else logging.DEBUG,
                    "chain not reachable (%s); minter waits for it", exc)
            await pause(stop, backoff.next())
    return None

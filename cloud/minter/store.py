"""Postgres side of the minter: claim readings, write batches ahead of sending, confirm, release.

It only persists: the minter service (`service.Minter.plan`) owns each planning transaction and calls
claim → (pure planner) → next_batch_id → sign → write_batch in it.

Every state change of a batch is a compare-and-swap on (status, signature), so two minters that
drive the same batch cannot both re-sign it (only the signature that is in the row is ever sent)
and a confirmation is applied exactly once, together with the ledger and the readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from cloud.minter import economics
from cloud.minter.planner import BatchPlan, MeterLedger, PendingReading
from cloud.minter.retry import RetryDecision, after_failure
from cloud.settings import TokenizationSettings

MEMO_PREFIX = "gridtokenx:mint-batch:"

# Oldest unminted readings of active meters whose retry time has come; rows other minters hold are
# skipped, and so are the readings of meters with an open batch (`meter_mint_ledger.open_batch_id`):
# a reading in an open batch is never written to until its batch confirms (migration 055).
_CLAIM = """
SELECT r.id, r.meter_id, r.wallet_address, r.export_wh
FROM meter_readings r
JOIN meters m ON m.meter_id = r.meter_id
LEFT JOIN minting_retry_queue q ON q.reading_id = r.id
LEFT JOIN meter_mint_ledger l ON l.meter_id = r.meter_id
WHERE r.minted = FALSE AND m.status = 'active' AND l.open_batch_id IS NULL
  AND ($2::bigint[] IS NULL OR r.id = ANY($2))
  AND ($3::text IS NULL OR r.meter_id = $3)
  AND (q.id IS NULL OR $4 OR (NOT q.dead_lettered AND q.next_retry_at <= now()))
ORDER BY r.id
LIMIT $1
FOR UPDATE OF r SKIP LOCKED
"""


def memo_for(batch_id: int) -> str:
    return f"{MEMO_PREFIX}{batch_id}"


def batch_id_from_memo(memo: str | None) -> int | None:
    if not memo:
        return None
    text = memo.strip()
    # RPC nodes report memos as "[len] text"; tolerate that form.
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    if not text.startswith(MEMO_PREFIX):
        return None
    tail = text[len(MEMO_PREFIX):]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True, slots=True)
class SignedTx:
    signature: str
    raw: bytes
    blockhash: str
    last_valid_block_height: int


@dataclass(frozen=True, slots=True)
class OpenBatch:
    id: int
    status: str
    memo: str
    wallets: tuple[str, ...]
    amounts: tuple[int, ...]
    signature: str | None
    tx_bytes: bytes | None
    last_valid_block_height: int | None
    sign_attempts: int
    manual: bool

    @property
    def transfers(self) -> list[tuple[str, int]]:
        return [(w, a) for w, a in zip(self.wallets, self.amounts, strict=True) if a > 0]


@dataclass(frozen=True, slots=True)
class Claimed:
    """One pass's claim: unminted readings locked for this transaction, the settings records, and the
    meters whose ledger this minter holds (no open batch, not being planned by another minter)."""

    rows: list[PendingReading]
    records: list[economics.MintSettings]
    free_meters: set[str]


async def claim(conn: asyncpg.Connection, *, limit: int, reading_ids: Sequence[int] | None, meter_id: str | None,
                manual: bool) -> Claimed | None:
    """Lock the oldest unminted readings (or the requested ones) and their meters' ledgers. Inside the
    caller's transaction; None when nothing is waiting."""
    records = await economics.load(conn)
    if not records:
        raise economics.SettingsError("no economic settings are recorded; the minter records them when it starts")
    rows = await conn.fetch(_CLAIM, limit, list(reading_ids) if reading_ids is not None else None, meter_id, manual)
    if not rows:
        return None
    meters = sorted({r["meter_id"] for r in rows})
    await conn.execute("INSERT INTO meter_mint_ledger (meter_id) SELECT unnest($1::text[]) "
                       "ON CONFLICT DO NOTHING", meters)
    # A meter with an open batch, or whose ledger another minter is planning, waits.
    free = {f["meter_id"] for f in await conn.fetch(
        "SELECT meter_id FROM meter_mint_ledger WHERE meter_id = ANY($1) AND open_batch_id IS NULL "
        "FOR UPDATE SKIP LOCKED", meters)}
    claimed = [PendingReading(r["id"], r["meter_id"], r["wallet_address"], r["export_wh"]) for r in rows]
    return Claimed(claimed, records, free)


async def dead_letter(conn: asyncpg.Connection, reasons: dict[int, str]) -> None:
    """Bad data, not a crash: these readings go to manual review with the reason; the others go on."""
    if reasons:
        await conn.executemany(
            "INSERT INTO minting_retry_queue (reading_id, attempts, error_message, dead_lettered)"
            " VALUES ($1, 1, $2, TRUE) ON CONFLICT (reading_id) DO UPDATE SET dead_lettered = TRUE,"
            " error_message = EXCLUDED.error_message, updated_at = now()", sorted(reasons.items()))


async def ledgers(conn: asyncpg.Connection, meters: Sequence[str], settings_id: int) -> dict[str, MeterLedger]:
    """What each meter has had minted under one settings record (the cumulative-minting base)."""
    return {g["meter_id"]: MeterLedger(g["minted_wh"], int(g["minted_units"])) for g in await conn.fetch(
        "SELECT meter_id, minted_wh, minted_units FROM meter_mint_ledger_settings"
        " WHERE meter_id = ANY($1) AND settings_id = $2", list(meters), settings_id)}


async def next_batch_id(conn: asyncpg.Connection) -> int:
    """The id a batch is signed for before it is written (its memo carries it)."""
    return int(await conn.fetchval("SELECT nextval('mint_batches_id_seq')"))


async def write_batch(conn: asyncpg.Connection, batch_id: int, p: BatchPlan, signed: SignedTx | None, *, mint: str,
                      authority: str, manual: bool, settings_id: int) -> list[float]:
    """Write the batch ahead of sending (the write-ahead log), with its signature when it has transfers.
    A batch with nothing to send (all dust) is complete as written: returns its readings' ingest → minted
    latencies then, else []."""
    wallets = list(p.wallet_amounts)
    meters = list(p.meter_wh)
    await conn.execute(
        "INSERT INTO mint_batches (id, mint_address, authority, memo, reading_ids, reading_units, wallets,"
        " amounts, meter_ids, meter_wh, meter_units, blockhash, last_valid_block_height, signature,"
        " tx_bytes, sign_attempts, manual, settings_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)",
        batch_id, mint, authority, memo_for(batch_id), p.reading_ids, _dec(p.reading_units), wallets,
        _dec([p.wallet_amounts[w] for w in wallets]), meters, [p.meter_wh[m] for m in meters],
        _dec([p.meter_units[m] for m in meters]),
        signed.blockhash if signed else None, signed.last_valid_block_height if signed else None,
        signed.signature if signed else None, signed.raw if signed else None, 1 if signed else 0, manual,
        settings_id)
    if signed:
        await conn.execute("INSERT INTO mint_batch_signatures (signature, batch_id, blockhash,"
                           " last_valid_block_height) VALUES ($1,$2,$3,$4)",
                           signed.signature, batch_id, signed.blockhash, signed.last_valid_block_height)
    await conn.execute("UPDATE meter_mint_ledger SET open_batch_id = $1, updated_at = now() "
                       "WHERE meter_id = ANY($2)", batch_id, meters)
    if signed:
        return []
    return await _apply_confirmation(conn, batch_id, None, None, None) or []


def _dec(values: Sequence[int]) -> list[Decimal]:
    return [Decimal(v) for v in values]


async def open_batches(pool: asyncpg.Pool, authority: str) -> list[OpenBatch]:
    rows = await pool.fetch(
        "SELECT id, status, memo, wallets, amounts, signature, tx_bytes, last_valid_block_height,"
        " sign_attempts, manual FROM mint_batches WHERE status IN ('planned', 'sent') AND authority = $1"
        " ORDER BY id", authority)
    return [OpenBatch(r["id"], r["status"], r["memo"], tuple(r["wallets"]), tuple(int(a) for a in r["amounts"]),
                      r["signature"], r["tx_bytes"], r["last_valid_block_height"], r["sign_attempts"],
                      r["manual"]) for r in rows]


async def mark_sent(pool: asyncpg.Pool, sent: Sequence[tuple[int, str]]) -> None:
    """Count one broadcast for each (batch id, signature) still open with that signature."""
    if not sent:
        return
    await pool.execute(
        "UPDATE mint_batches b SET status = 'sent', send_count = send_count + 1,"
        " sent_at = COALESCE(sent_at, now()), updated_at = now()"
        " FROM unnest($1::bigint[], $2::text[]) AS s(id, signature)"
        " WHERE b.id = s.id AND b.signature = s.signature AND b.status IN ('planned', 'sent')",
        [i for i, _ in sent], [sig for _, sig in sent])


async def resign(pool: asyncpg.Pool, batch_id: int, old_signature: str, new: SignedTx) -> bool:
    """Replace an expired signature; False when someone else already changed the batch."""
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE mint_batches SET status = 'planned', signature = $3, tx_bytes = $4, blockhash = $5,"
            " last_valid_block_height = $6, sign_attempts = sign_attempts + 1, updated_at = now()"
            " WHERE id = $1 AND signature = $2 AND status IN ('planned', 'sent') RETURNING id",
            batch_id, old_signature, new.signature, new.raw, new.blockhash, new.last_valid_block_height)
        if done is None:
            return False
        await conn.execute("INSERT INTO mint_batch_signatures (signature, batch_id, blockhash,"
                           " last_valid_block_height) VALUES ($1,$2,$3,$4)",
                           new.signature, batch_id, new.blockhash, new.last_valid_block_height)
        return True


async def confirm(pool: asyncpg.Pool, batch_id: int, signature: str, slot: int,
                  block_time: int | None) -> list[float] | None:
    """Apply a landed batch; returns per-reading latencies (s, ingest commit → now) or None if already done."""
    async with pool.acquire() as conn, conn.transaction():
        return await _apply_confirmation(conn, batch_id, signature, slot, block_time)


async def confirm_many(pool: asyncpg.Pool, landed: Sequence[tuple[int, str, int, int | None]]
                       ) -> list[list[float] | None]:
    """`confirm` for each (batch id, signature, slot, block time), all in one PostgreSQL transaction:
    one durable commit for a pass's confirmations instead of one per batch. Each is the same
    compare-and-swap, so a batch someone else already confirmed is skipped (None)."""
    if not landed:
        return []
    async with pool.acquire() as conn, conn.transaction():
        return await _apply_confirmations(conn, landed)


async def _apply_confirmation(conn: asyncpg.Connection, batch_id: int, signature: str | None,
                              slot: int | None, block_time: int | None) -> list[float] | None:
    return (await _apply_confirmations(conn, [(batch_id, signature, slot, block_time)]))[0]


async def _apply_confirmations(conn: asyncpg.Connection,
                               landed: Sequence[tuple[int, str | None, int | None, int | None]]
                               ) -> list[list[float] | None]:
    """Every batch's readings and ledgers first, then the status changes (see `_mark_confirmed`)."""
    out = [await _record_landed(conn, batch_id, signature, slot, block_time)
           for batch_id, signature, slot, block_time in landed]
    for (batch_id, _, slot, block_time), latencies in zip(landed, out, strict=True):
        if latencies is not None:
            await _mark_confirmed(conn, batch_id, slot, block_time)
    return out


async def _mark_confirmed(conn: asyncpg.Connection, batch_id: int, slot: int | None, block_time: int | None) -> None:
    """The batch's status change, last in its transaction: it fires the API's event trigger, which holds
    the one event lock until commit (migration 040), and every ingest write waits for that lock. Done
    first, it held the lock through the readings' update and stalled ingest for the whole of it."""
    await conn.execute(
        "UPDATE mint_batches SET status = 'confirmed', slot = $2, block_time = to_timestamp($3),"
        " confirmed_at = now(), updated_at = now(), error = NULL WHERE id = $1", batch_id, slot, block_time)


async def _record_landed(conn: asyncpg.Connection, batch_id: int, signature: str | None, slot: int | None,
                         block_time: int | None) -> list[float] | None:
    """A landed batch's readings, ledgers and retry rows. The compare-and-swap is the row lock on the
    batch while it is still open with this signature: a concurrent confirm or release waits for this
    transaction and then finds it confirmed. None when it is not open with this signature."""
    row = await conn.fetchrow(
        "SELECT reading_ids, reading_units, meter_ids, meter_wh, meter_units, settings_id FROM mint_batches"
        " WHERE id = $1 AND signature IS NOT DISTINCT FROM $2 AND status IN ('planned', 'sent') FOR UPDATE",
        batch_id, signature)
    if row is None:
        return None
    # The readings, and the per-second figures `status.read_status` reads instead of scanning them.
    latencies = await conn.fetch(
        "WITH m AS (UPDATE meter_readings r SET minted = TRUE, mint_batch_id = $1, mint_tx_signature = $2,"
        " mint_slot = $3, mint_block_time = to_timestamp($4), minted_at = now(), updated_at = now(),"
        " mint_base_units = u.units"
        " FROM unnest($5::bigint[], $6::numeric[]) AS u(id, units)"
        " WHERE r.id = u.id AND NOT r.minted"
        " RETURNING floor(EXTRACT(EPOCH FROM r.submitted_at))::bigint AS second,"
        " EXTRACT(EPOCH FROM (now() - r.submitted_at))::float8 AS latency),"
        " s AS (INSERT INTO mint_stats_by_second AS t (submitted_second, minted, latency_sum_secs)"
        " SELECT second, count(*), sum(latency) FROM m GROUP BY second"
        " ON CONFLICT (submitted_second) DO UPDATE SET minted = t.minted + EXCLUDED.minted,"
        " latency_sum_secs = t.latency_sum_secs + EXCLUDED.latency_sum_secs)"
        " SELECT latency FROM m",
        batch_id, signature, slot, block_time, row["reading_ids"], row["reading_units"])
    await conn.execute(
        "UPDATE meter_mint_ledger l SET minted_wh = l.minted_wh + u.wh, minted_units = l.minted_units + u.units,"
        " open_batch_id = NULL, updated_at = now()"
        " FROM unnest($2::text[], $3::bigint[], $4::numeric[]) AS u(meter_id, wh, units)"
        " WHERE l.meter_id = u.meter_id AND l.open_batch_id = $1",
        batch_id, row["meter_ids"], row["meter_wh"], row["meter_units"])
    await conn.execute(
        "INSERT INTO meter_mint_ledger_settings AS l (meter_id, settings_id, minted_wh, minted_units)"
        " SELECT u.meter_id, $1, u.wh, u.units"
        " FROM unnest($2::text[], $3::bigint[], $4::numeric[]) AS u(meter_id, wh, units)"
        " ON CONFLICT (meter_id, settings_id) DO UPDATE SET minted_wh = l.minted_wh + EXCLUDED.minted_wh,"
        " minted_units = l.minted_units + EXCLUDED.minted_units",
        row["settings_id"], row["meter_ids"], row["meter_wh"], row["meter_units"])
    await conn.execute("DELETE FROM minting_retry_queue WHERE reading_id = ANY($1)", row["reading_ids"])
    return [float(r["latency"]) for r in latencies]


async def release(pool: asyncpg.Pool, batch_id: int, signature: str | None, *, status: str, error: str,
                  settings: TokenizationSettings) -> list[RetryDecision] | None:
    """A batch that provably never landed: free its readings and meters, schedule the readings' retry."""
    assert status in ("failed", "expired")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE mint_batches SET status = $3, error = $4, updated_at = now()"
            " WHERE id = $1 AND signature IS NOT DISTINCT FROM $2 AND status IN ('planned', 'sent')"
            " RETURNING reading_ids", batch_id, signature, status, error[:2000])
        if row is None:
            return None
        await conn.execute("UPDATE meter_mint_ledger SET open_batch_id = NULL, updated_at = now()"
                           " WHERE open_batch_id = $1", batch_id)
        previous = {r["reading_id"]: r["attempts"] for r in await conn.fetch(
            "SELECT reading_id, attempts FROM minting_retry_queue WHERE reading_id = ANY($1) FOR UPDATE",
            row["reading_ids"])}
        decisions = []
        for rid in row["reading_ids"]:
            d = after_failure(previous.get(rid, 0), settings)
            decisions.append(d)
            await conn.execute(
                "INSERT INTO minting_retry_queue (reading_id, attempts, next_retry_at, error_message,"
                " dead_lettered) VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5)"
                " ON CONFLICT (reading_id) DO UPDATE SET attempts = EXCLUDED.attempts,"
                " next_retry_at = EXCLUDED.next_retry_at, error_message = EXCLUDED.error_message,"
                " dead_lettered = EXCLUDED.dead_lettered, updated_at = now()",
                rid, d.attempts, d.delay_seconds, f"batch {batch_id}: {error}"[:2000], d.dead_letter)
        return decisions




@dataclass(frozen=True, slots=True)
class MintRequest:
    id: int
    reading_ids: tuple[int, ...] | None
    meter_id: str | None


async def request_mint(pool: asyncpg.Pool, *, reading_ids: Sequence[int] | None, meter_id: str | None) -> int:
    return int(await pool.fetchval("INSERT INTO mint_requests (reading_ids, meter_id) VALUES ($1, $2) RETURNING id",
                                   list(reading_ids) if reading_ids else None, meter_id))


async def pending_requests(pool: asyncpg.Pool) -> list[MintRequest]:
    rows = await pool.fetch("SELECT id, reading_ids, meter_id FROM mint_requests WHERE served_at IS NULL ORDER BY id")
    return [MintRequest(r["id"], tuple(r["reading_ids"]) if r["reading_ids"] else None, r["meter_id"])
            for r in rows]


async def mark_request_served(pool: asyncpg.Pool, request_id: int, batch_ids: Sequence[int]) -> None:
    await pool.execute("UPDATE mint_requests SET served_at = now(), batch_ids = $2 WHERE id = $1",
                       request_id, list(batch_ids))
